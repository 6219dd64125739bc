"""The ``predict`` probe: the dispatch tracker on fake tensors.

The model, the method's state and the client's sub-model are constructed on the ``meta``
device (no weights, no initialisation maths; :func:`~profl_core.memory.step.method_step`), then
the sub-model's parameters and buffers are replaced by empty ``FakeTensorMode`` tensors on ``cpu``
(``Module.to``/``to_empty`` fail on fake tensors, and some initialisers such as
``trunc_normal_`` make data-dependent calls that fake tensors refuse). The optimizer, batch,
warm-up step and measured step then all run on fake tensors, and
:class:`~profl_core.memory.dispatch.StorageTracker` counts their storages. Nothing is
allocated, and the bytes equal the ``dispatch`` probe on real CPU tensors byte for byte.

A real CPU kernel occasionally returns a storage larger than its fake kernel says (the 0-d
result of ``mse_loss`` keeps an input-sized buffer); :data:`REAL_STORAGE_BYTES` corrects those
ops so the two probes agree byte for byte. It may also return another dtype (batch norm under
autocast saves its statistics in fp32, the fake kernel in bf16); :data:`REAL_OUTPUTS` gives
those ops the real kernel's outputs, so later ops (and their scratch) see the real dtypes.

The heap (``heap_peak_bytes``, what the CPU allocator holds) is modelled too, without running
the step: after each op the tracker adds that op's kernel scratch, measured once per op
signature and thread count on real tensors by a :class:`~profl_core.memory.scratch.ScratchModel`
and cached; the heap during an op is the live bytes before it plus its outputs plus its
scratch, and the heap peak is the largest such value (equal to the ``heap`` probe's when every
scratch-allocating op is in the model and scratch does not depend on values). Pass
``heap=False`` for the tensor figures only (nothing real runs at all).

What it cannot see: allocator caching, the CUDA context. The predicted step is the CPU step
(single-tensor optimizer loops) unless the case sets ``foreach=True``: then the optimizer runs
PyTorch's multi-tensor kernels, whose temporaries CUDA's default optimizer holds.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from profl_core.memory.case import TrainingCase
from profl_core.memory.dispatch import StorageTracker
from profl_core.memory.heap import intra_op_threads
from profl_core.memory.report import MemoryReport
from profl_core.memory.scratch import ScratchModel
from profl_core.memory.step import PreparedStep, build_fake_step

aten = torch.ops.aten


def _reduced_loss_bytes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """``mse_loss`` with a reduction returns a 0-d view of an input-sized buffer on the CPU."""
    reduction = kwargs.get("reduction", args[2] if len(args) > 2 else 1)
    if reduction == 0:
        return None
    first: Tensor = args[0]
    return first.numel() * first.element_size()


# Ops whose real CPU kernel returns a storage larger than the fake kernel's (checked against
# the dispatch probe by tests/unit/memory/test_predict.py).
REAL_STORAGE_BYTES: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], int | None]] = {
    aten.mse_loss.default: _reduced_loss_bytes,
}


_REDUCED = (torch.bfloat16, torch.float16)


def _mixed_norm(params: slice) -> Callable[[tuple[Any, ...], Any], Any]:
    """A norm of a bf16/fp16 input with fp32 parameters (``args[params]``; autocast): the CPU
    kernel saves its statistics (the outputs after the first) in fp32, the fake kernel in the
    input's dtype."""

    def fix(args: tuple[Any, ...], out: Any) -> Any:
        if args[0].dtype not in _REDUCED or not any(
                isinstance(p, Tensor) and p.dtype == torch.float32 for p in args[params]):
            return out
        saved = [torch.empty(t.shape, dtype=torch.float32, device=t.device) for t in out[1:]]
        return (out[0], *saved)

    return fix


# Ops whose real CPU kernel returns outputs of another dtype than the fake kernel's: the fix
# maps (args, fake outputs) to the real kernel's outputs (checked by
# tests/unit/memory/test_memory_alternatives.py).
REAL_OUTPUTS: dict[Any, Callable[[tuple[Any, ...], Any], Any]] = {
    # (input, weight, bias, running_mean, running_var, ...) -> (out, save_mean, save_invstd)
    aten.native_batch_norm.default: _mixed_norm(slice(1, 5)),
    # (input, normalized_shape, weight, bias, eps) -> (out, mean, rstd)
    aten.native_layer_norm.default: _mixed_norm(slice(2, 4)),
}


class _RealOutputs(TorchDispatchMode):
    """Between the tracker and the fake mode: fake outputs as the CPU kernels return them."""

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        fix = REAL_OUTPUTS.get(func)
        return out if fix is None else fix(args, out)


class FakeStorageTracker(StorageTracker):
    """The storage tracker with the real CPU storage size of a few ops and, given a scratch
    model, the heap modelled as live bytes plus each op's kernel scratch (see module doc).

    Args:
        scratch: gives each op's scratch bytes; ``None`` models no heap.
        threads: the intra-op thread count the scratch is measured for.
    """

    def __init__(self, scratch: ScratchModel | None = None, *, threads: int = 1) -> None:
        super().__init__()
        self.scratch = scratch
        self.threads = threads
        self.models_heap = scratch is not None

    def op_scratch_bytes(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> int:
        """The scratch model's bytes for this call (0 without a model)."""
        if self.scratch is None:
            return 0
        return self.scratch.scratch_bytes(func, args, kwargs, threads=self.threads)

    def track_outputs(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        """Count the outputs, correcting ops listed in :data:`REAL_STORAGE_BYTES`."""
        rule = REAL_STORAGE_BYTES.get(func)
        nbytes = rule(args, kwargs) if rule is not None else None
        if nbytes is None or not isinstance(out, Tensor):
            super().track_outputs(func, args, kwargs, out)
            return
        self.track(out, self.default_category, nbytes=nbytes)


_SHARED_SCRATCH = ScratchModel()  # the in-process cache used when no model is given


def measure_fake(
    make: Callable[[], PreparedStep],
    *,
    heap: bool = True,
    threads: int | None = None,
    scratch: ScratchModel | None = None,
) -> MemoryReport:
    """Predict the second run of the step ``make()`` builds inside ``FakeTensorMode`` on the CPU
    (``make`` builds with ``fake=True``, e.g. :func:`~profl_core.memory.step.build_fake_step`
    or :func:`~profl_core.memory.step.method_step`).

    Args:
        make: builds the step (called inside the fake mode).
        heap: also model ``heap_peak_bytes`` (runs each new scratch-op signature once on
            real tensors); False: tensor figures only, nothing real runs.
        threads: the intra-op thread count the heap is modelled for; ``None``: the current
            ``torch.get_num_threads()``.
        scratch: the scratch model and its cache; ``None`` uses one shared in-process model.
            A model with a ``cache_path`` is saved when it measured something new.
    """
    model = (scratch if scratch is not None else _SHARED_SCRATCH) if heap else None
    # Real CPU constants of a method (HeteroFL's label mask) become fake when used.
    # New tensors go to the CPU whatever the caller's default device; a device context costs
    # a Python call per torch function, so it is entered only when the default differs.
    on_cpu = nullcontext() if torch.get_default_device().type == "cpu" else torch.device("cpu")
    with intra_op_threads(threads) as used, FakeTensorMode(allow_non_fake_inputs=True), \
            _RealOutputs(), on_cpu:
        prepared = make()
        prepared.run()  # warm-up
        tracker = FakeStorageTracker(model, threads=used)
        tracker.track_step(prepared, collect=False)  # nothing real to give back
        report = tracker.report(probe="predict", device="cpu", case_key=prepared.key,
                                threads=used)
    if model is not None and model.dirty:
        model.save()
    return report


def measure(
    case: TrainingCase,
    *,
    heap: bool = True,
    threads: int | None = None,
    scratch: ScratchModel | None = None,
) -> MemoryReport:
    """Predict the second training step of ``case`` on the CPU without running it (arguments
    as in :func:`measure_fake`)."""
    return measure_fake(lambda: build_fake_step(case), heap=heap, threads=threads,
                        scratch=scratch)
