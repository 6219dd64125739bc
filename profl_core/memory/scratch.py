"""Kernel scratch per op: measured once per signature on real tensors, then cached.

Some CPU kernels allocate buffers for themselves and free them before they return: oneDNN's
convolution forward and backward (reorders to blocked layouts, im2col-like scratchpads),
batch-norm and layer-norm backward (per-thread reduction buffers), the CPU flash-attention
kernels (workspaces). No tensor owns these bytes, so the tensor probes never see them, but the
allocator has to grant them: they are the difference between ``tensor_peak_bytes`` and
``heap_peak_bytes``.

:class:`ScratchModel` gives the scratch of one op call without running the step: the first
time a *signature* is asked for (the op, the shapes, strides and dtypes of its tensor
arguments, its other arguments, the intra-op thread count, the torch version and the CPU
capability), the op is run once on real random CPU tensors of those shapes as a warm-up and
once more under an :class:`~profl_core.memory.heap.AllocatorRecorder`. Its scratch is the
highest net bytes allocated while it ran minus the bytes it still held when it returned (its
outputs): what the heap held *on top of* live tensors plus outputs at the op's worst moment.
The ``predict`` probe adds it to the live tensor bytes right after the op
(:meth:`~profl_core.memory.dispatch.StorageTracker.op_scratch_bytes`): the heap during the op
is everything live before it, plus its outputs, plus its scratch; outputs stay, scratch goes.

Only ops in :data:`SCRATCH_OPS`, and every op with a bfloat16 or float16 tensor argument
(:data:`REDUCED_DTYPES`), are measured (every other op is taken to allocate exactly its
outputs). Reduced-precision kernels hold buffers of their own in many more ops (autocast's
bf16 steps: oneDNN's bf16 GEMMs ``mm``/``addmm``, fp32 accumulators of ``mean``, the cast copy
of a mixed-dtype ``add``), so those are all measured. The list comes from :func:`survey`,
which runs a real step op by op and reports every op whose kernel held more than its outputs;
on the memory-ci models (cnn, resnet18/34, vgg11/16, vit) in fp32 the ops below are all that
hold more than a few bytes (element-wise ops with a
Python scalar keep a 0-d wrapped scalar of 8-12 bytes, which is not modelled).

Results are cached in the model instance (and so in the process, for the shared instance
``predict`` uses by default) and, when the model is given a ``cache_path``, in a JSON file
(written by :meth:`ScratchModel.save`). Sizes are the allocator's requested bytes, like the
``heap`` probe (no alignment rounding: both sides count the same thing).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves, tree_map

from profl_core.errors import ConfigError
from profl_core.memory.heap import intra_op_threads, transient_bytes
from profl_core.memory.step import PreparedStep
from profl_core.results import atomic_write_text

aten = torch.ops.aten

SCRATCH_OPS: frozenset[Any] = frozenset({
    aten.convolution,
    aten.convolution_backward,
    aten.native_batch_norm,
    aten.native_batch_norm_backward,
    aten.native_layer_norm,
    aten.native_layer_norm_backward,
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
})
#: Dtypes whose ops are all measured (see the module docstring).
REDUCED_DTYPES: frozenset[torch.dtype] = frozenset({torch.bfloat16, torch.float16})
CACHE_VERSION = 1


@dataclass(frozen=True)
class ScratchEntry:
    """What one op signature allocated when run alone on real tensors.

    Attributes:
        transient_bytes: the highest net bytes allocated while it ran.
        output_bytes: net bytes still allocated when it returned (its outputs).
    """

    transient_bytes: int
    output_bytes: int

    @property
    def scratch_bytes(self) -> int:
        """Bytes held on top of the outputs at the op's worst moment (never negative)."""
        return max(0, self.transient_bytes - self.output_bytes)


def _describe(value: Any) -> Any:
    if isinstance(value, Tensor):
        return ["tensor", str(value.dtype), list(value.shape), list(value.stride())]
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in sorted(value.items())}
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(value)
    return repr(value)


def signature(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], threads: int) -> str:
    """The cache key of one op call: op, argument shapes/strides/dtypes, other arguments,
    thread count, torch version and CPU capability (scratch depends on all of them)."""
    return json.dumps(
        {
            "op": str(func),
            "args": _describe(args),
            "kwargs": _describe(dict(kwargs)),
            "threads": threads,
            "torch": torch.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(),
        },
        sort_keys=True,
    )


def _realize(value: Any, generator: torch.Generator) -> Any:
    """A real CPU tensor with the shape, strides and dtype of ``value`` (random if floating).

    Its storage is filled before the strides are applied, so expanded (stride-0) arguments
    work too.
    """
    if not isinstance(value, Tensor):
        return value
    real = torch.empty_strided(tuple(value.shape), tuple(value.stride()), dtype=value.dtype,
                               device="cpu")
    flat = real.new_empty(0).set_(real.untyped_storage())  # the whole storage, 1-d
    if real.is_floating_point():
        flat.normal_(generator=generator)
    else:
        flat.zero_()
    return real


def measure_op(
    func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, threads: int, seed: int = 0
) -> ScratchEntry:
    """Run ``func`` on real random CPU tensors shaped like ``args``: a warm-up, then a
    recorded run. Tensor arguments may be fake; no dispatch mode is active while it runs."""
    generator = torch.Generator().manual_seed(seed)
    with _disable_current_modes(), torch.no_grad(), intra_op_threads(threads):
        real_args, real_kwargs = tree_map(lambda v: _realize(v, generator), (args, dict(kwargs)))
        func(*real_args, **real_kwargs)  # warm-up: oneDNN builds and caches its primitive
        out, peak, net = transient_bytes(lambda: func(*real_args, **real_kwargs))
        del out
    return ScratchEntry(transient_bytes=peak, output_bytes=net)


class ScratchModel:
    """Scratch bytes per op call, measured once per signature and cached.

    Args:
        cache_path: a JSON file to load cached entries from (when it exists) and to
            :meth:`save` them to; ``None`` keeps them in this instance only.
        ops: the op overload packets to measure (others have no scratch).
        seed: seeds the random inputs of the measuring runs.
        reduced: also measure every op with a tensor argument in :data:`REDUCED_DTYPES`.

    Raises:
        ConfigError: when ``cache_path`` exists but is not a scratch cache.
    """

    def __init__(
        self,
        cache_path: Path | None = None,
        *,
        ops: Iterable[Any] = SCRATCH_OPS,
        seed: int = 0,
        reduced: bool = True,
    ) -> None:
        self.cache_path = cache_path
        self.ops = frozenset(ops)
        self.seed = seed
        self.reduced = reduced
        self.entries: dict[str, ScratchEntry] = {}
        self.measured = 0
        self.dirty = False
        if cache_path is not None and cache_path.exists():
            self.entries.update(_load(cache_path))

    def models(self, func: Any, args: tuple[Any, ...] = ()) -> bool:
        """Whether ``func`` (an op overload) called with ``args`` is measured: an op of
        :attr:`ops`, or (with :attr:`reduced`) any op with a bf16/fp16 tensor argument."""
        if getattr(func, "overloadpacket", func) in self.ops:
            return True
        return self.reduced and any(isinstance(a, Tensor) and a.dtype in REDUCED_DTYPES
                                    for a in tree_leaves(args))

    def entry(
        self, func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, threads: int
    ) -> ScratchEntry:
        """The cached entry of this call's signature, measured now if it is new."""
        key = signature(func, args, kwargs, threads)
        found = self.entries.get(key)
        if found is None:
            found = measure_op(func, args, kwargs, threads=threads, seed=self.seed)
            self.entries[key] = found
            self.measured += 1
            self.dirty = True
        return found

    def scratch_bytes(
        self, func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, threads: int
    ) -> int:
        """Scratch of one op call at ``threads`` threads (0 for ops not measured)."""
        if not self.models(func, args):
            return 0
        return self.entry(func, args, kwargs, threads=threads).scratch_bytes

    def save(self) -> None:
        """Write every entry to :attr:`cache_path` atomically (nothing without a path)."""
        if self.cache_path is None:
            return
        data = {
            "version": CACHE_VERSION,
            "entries": {k: [e.transient_bytes, e.output_bytes]
                        for k, e in sorted(self.entries.items())},
        }
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.cache_path, json.dumps(data, indent=0) + "\n")
        self.dirty = False


def _load(path: Path) -> dict[str, ScratchEntry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a scratch cache ({err}); delete it to re-measure") from None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        raise ConfigError(f"{path}: not a version-{CACHE_VERSION} scratch cache; delete it "
                          "to re-measure")
    try:
        return {str(k): ScratchEntry(int(v[0]), int(v[1])) for k, v in data["entries"].items()}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise ConfigError(f"{path}: malformed scratch cache entries; delete it to "
                          "re-measure") from None


@dataclass(frozen=True)
class OpScratch:
    """What :func:`survey` found for one op overload.

    Attributes:
        op: the op overload's name (``aten.convolution.default``).
        calls: how often the step called it.
        calls_with_scratch: calls whose kernel held more than its outputs.
        max_scratch_bytes: the most scratch of one call.
    """

    op: str
    calls: int
    calls_with_scratch: int
    max_scratch_bytes: int


class _Survey(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()
        self.with_scratch: collections.Counter[str] = collections.Counter()
        self.max_scratch: dict[str, int] = {}

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out, peak, net = transient_bytes(lambda: func(*args, **(kwargs or {})))
        name = str(func)
        self.calls[name] += 1
        if peak > net:
            self.with_scratch[name] += 1
            self.max_scratch[name] = max(self.max_scratch.get(name, 0), peak - net)
        return out


def survey(prepared: PreparedStep, *, threads: int | None = None) -> list[OpScratch]:
    """Run one step op by op, each op under its own allocator recorder.

    Finds the ops whose kernels hold more than their outputs (candidates for
    :data:`SCRATCH_OPS`). Slow (one profiler session per op); run ``prepared`` once before so
    that this is its second step.

    Returns:
        one entry per op overload that held scratch at least once, most scratch first.
    """
    mode = _Survey()
    with intra_op_threads(threads), mode:
        prepared.run()
    found = [
        OpScratch(op=name, calls=mode.calls[name], calls_with_scratch=mode.with_scratch[name],
                  max_scratch_bytes=mode.max_scratch[name])
        for name in mode.with_scratch
    ]
    return sorted(found, key=lambda s: -s.max_scratch_bytes)

