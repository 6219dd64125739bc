"""The ``dispatch`` probe: live-storage accounting in a ``TorchDispatchMode``.

Every op output's ``untyped_storage()`` is counted once (keyed by the storage object, whose
Python wrapper PyTorch keeps alive exactly as long as the storage); a weakref finalizer notices
when it is freed. Each storage gets a :class:`~profl_core.memory.categories.Category`:

* parameters (trainable or frozen), buffers, optimizer state, the input batch and any existing
  gradients are registered from the step's modules before the measured step;
* storages created during forward are activations, during backward or the optimizer step
  temporaries; a storage that becomes a trainable parameter's ``.grad`` is re-tagged as a
  gradient (post-accumulate-grad hooks, registered only on parameters that require grad);
  after ``optimizer.step()`` storages found in ``optimizer.state`` are re-tagged as state.

The live total and the peak are updated after every op. Block boundaries come from the step's
:class:`~profl_core.memory.case.StepObserver` callbacks: a block's backward starts when the
gradient of its output is ready (a tensor hook registered only on outputs that require grad),
so frozen blocks run under ``no_grad`` have a forward segment and no backward segment, and no
hook is ever put on a ``requires_grad=False`` tensor (which is why PyTorch's ``MemTracker``
fails on frozen prefixes). Ops outside any block are attributed to the ``loss`` segment
(forward and backward) and the ``optimizer`` segment (step and ``zero_grad``).

On CUDA each storage is rounded up to 512 B like the caching allocator; CPU bytes are exact.

Known limitations: allocations made inside a kernel (oneDNN scratch, im2col buffers, cuDNN
workspaces) and tensors created under ``no_dispatch`` are not seen; a storage resized outside
an op output (``UntypedStorage.resize_``) is updated only the next time an op returns it.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from profl_core.memory.case import PreparedStep, SegmentObserver, TrainingCase, build_step
from profl_core.memory.categories import Category
from profl_core.memory.report import BlockPeak, MemoryReport, Phase

CUDA_BLOCK_BYTES = 512
CHECKPOINTS: tuple[str, ...] = (
    "before_step", "after_forward", "after_backward", "after_optimizer", "after_step"
)


def storage_bytes(storage: torch.UntypedStorage) -> int:
    """Bytes a storage occupies: exact on CPU, rounded up to 512 B on CUDA."""
    nbytes = int(storage.nbytes())
    if storage.device.type == "cuda":
        return -(-nbytes // CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES
    return nbytes


@dataclass
class _Entry:
    nbytes: int
    category: Category
    ref: weakref.ref[torch.UntypedStorage] | None = None
    sized: bool = False  # size given explicitly; do not follow the storage's nbytes


@dataclass
class _SegmentPeak:
    block: str
    phase: Phase
    peak_bytes: int
    breakdown: dict[Category, int] = field(default_factory=dict)


class StorageTracker(TorchDispatchMode):
    """Counts live tensor storages by category while one prepared step runs.

    Use :meth:`track_step` rather than the mode directly::

        tracker = StorageTracker()
        tracker.track_step(prepared)      # runs prepared.run() once under the mode
        report = tracker.report(probe="dispatch", device="cpu")
    """

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[int, _Entry] = {}
        self._by_category: dict[Category, int] = dict.fromkeys(Category, 0)
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_breakdown: dict[Category, int] = {}
        self.peak_at: tuple[str, str] | None = None
        self.baseline_bytes = 0
        self.checkpoints: dict[str, dict[Category, int]] = {}
        self.ops = 0
        self._segments: dict[tuple[str, str], _SegmentPeak] = {}
        self._current: tuple[str, Phase] | None = None
        self.default_category = Category.OTHER

    # --- accounting -------------------------------------------------------------------------

    def track(
        self,
        tensor: Tensor,
        category: Category,
        *,
        retag: bool = False,
        nbytes: int | None = None,
    ) -> None:
        """Count ``tensor``'s storage under ``category`` (once).

        Args:
            tensor: any tensor; its storage is what is counted.
            category: the category of a storage seen for the first time.
            retag: move an already known storage to ``category``.
            nbytes: the storage's size when the tensor's own storage under-reports it (fake
                tensors of ops whose real kernel allocates more; see ``predict``).
        """
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or storage-less tensors
            return
        key = id(storage)
        entry = self._entries.get(key)
        size = storage_bytes(storage) if nbytes is None else nbytes
        if entry is None:
            entry = _Entry(size, category, sized=nbytes is not None)
            entry.ref = weakref.ref(storage, self._make_finalizer(key))
            self._entries[key] = entry
            self._add(category, entry.nbytes)
            return
        if not entry.sized and nbytes is None and size != entry.nbytes:  # resized in place
            self._add(entry.category, size - entry.nbytes)
            entry.nbytes = size
        if retag and entry.category != category:
            self._add(entry.category, -entry.nbytes)
            self._add(category, entry.nbytes)
            entry.category = category

    def _make_finalizer(self, key: int) -> Callable[[weakref.ref[torch.UntypedStorage]], None]:
        def freed(_: weakref.ref[torch.UntypedStorage]) -> None:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._add(entry.category, -entry.nbytes)

        return freed

    def _add(self, category: Category, nbytes: int) -> None:
        self._by_category[category] += nbytes
        self.live_bytes += nbytes

    def _update_peaks(self) -> None:
        live = self.live_bytes
        if live > self.peak_bytes:
            self.peak_bytes = live
            self.peak_breakdown = {c: n for c, n in self._by_category.items() if n}
            self.peak_at = self._current
        if self._current is not None:
            segment = self._segments[self._current]
            if live > segment.peak_bytes:
                segment.peak_bytes = live
                segment.breakdown = {c: n for c, n in self._by_category.items() if n}

    def breakdown(self) -> dict[Category, int]:
        """Live bytes per category now (zero categories omitted)."""
        return {c: n for c, n in self._by_category.items() if n}

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        self.track_outputs(func, args, kwargs, out)
        self._update_peaks()
        return out

    def track_outputs(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        """Count the storages an op returned (subclasses may correct sizes per op)."""
        category = self.default_category
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.track(leaf, category)

    # --- segments ---------------------------------------------------------------------------

    def enter_segment(self, block: str, phase: Phase) -> None:
        """Attribute what follows to ``(block, phase)``."""
        self._current = (block, phase)
        self.default_category = Category.ACTIVATION if phase == "forward" else Category.TEMPORARY
        if self._current not in self._segments:
            self._segments[self._current] = _SegmentPeak(block, phase, self.live_bytes)
        self._update_peaks()

    def checkpoint(self, name: str) -> None:
        """Record the live breakdown under ``name`` (reported in ``extra``)."""
        self.checkpoints[name] = self.breakdown()

    # --- the measured step -----------------------------------------------------------------

    def register_step(self, prepared: PreparedStep) -> None:
        """Register what is live before the step: parameters, buffers, state, grads, input."""
        for module in prepared.modules():
            for param in module.parameters():
                cat = Category.PARAM_TRAINABLE if param.requires_grad else Category.PARAM_FROZEN
                self.track(param, cat)
                if param.grad is not None:
                    self.track(param.grad, Category.GRADIENT)
            for buffer in module.buffers():
                self.track(buffer, Category.BUFFER)
        for tensor in _state_tensors(prepared.optimizer):
            self.track(tensor, Category.OPTIMIZER_STATE)
        self.track(prepared.inputs, Category.INPUT)
        if prepared.labels is not None:
            self.track(prepared.labels, Category.INPUT)

    def track_step(self, prepared: PreparedStep) -> None:
        """Run ``prepared`` once under the tracker (cyclic GC paused for determinism)."""
        gc.collect()
        self.register_step(prepared)
        self.baseline_bytes = self.live_bytes
        self.peak_bytes = self.live_bytes
        self.peak_breakdown = self.breakdown()
        self.checkpoint("before_step")
        hooks = [
            p.register_post_accumulate_grad_hook(self._grad_hook)
            for p in prepared.trainable_parameters()
        ]
        observer = _TrackerObserver(self, prepared)
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            with self:
                prepared.run(observer)
        finally:
            if was_enabled:
                gc.enable()
            for hook in hooks:
                hook.remove()
        self._current = None

    def _grad_hook(self, param: Tensor) -> None:
        if param.grad is not None:
            self.track(param.grad, Category.GRADIENT, retag=True)
            self._update_peaks()

    def report(self, *, probe: str, device: str, case_key: str) -> MemoryReport:
        """The :class:`MemoryReport` of the tracked step."""
        extra: dict[str, int] = {}
        for name, snapshot in self.checkpoints.items():
            extra[f"{name}.total"] = sum(snapshot.values())
            for cat, nbytes in snapshot.items():
                extra[f"{name}.{cat}"] = nbytes
        return MemoryReport(
            probe=probe,
            device=device,
            case_key=case_key,
            baseline_bytes=self.baseline_bytes,
            peak_bytes=self.peak_bytes,
            peak_breakdown=dict(self.peak_breakdown),
            peak_at=self.peak_at,
            blocks=tuple(
                BlockPeak(block=s.block, phase=s.phase, peak_bytes=s.peak_bytes,
                          breakdown=dict(s.breakdown))
                for s in self._segments.values()
            ),
            extra=extra,
        )


def _state_tensors(optimizer: torch.optim.Optimizer) -> Iterable[Tensor]:
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                yield value


class _TrackerObserver(SegmentObserver):
    """Moves the tracker between segments as the step runs."""

    def __init__(self, tracker: StorageTracker, prepared: PreparedStep) -> None:
        self.tracker = tracker
        self.prepared = prepared

    def enter_segment(self, block: str, phase: str) -> None:
        self.tracker.enter_segment(block, cast(Phase, phase))

    def checkpoint(self, name: str) -> None:
        if name == "after_optimizer":
            for tensor in _state_tensors(self.prepared.optimizer):
                self.tracker.track(tensor, Category.OPTIMIZER_STATE, retag=True)
        self.tracker.checkpoint(name)


def measure_step(
    prepared: PreparedStep, *, probe: str = "dispatch", device: str = "cpu", warmup: bool = True
) -> MemoryReport:
    """Measure one prepared step with the storage tracker.

    Args:
        prepared: the step (its first run is the warm-up that creates optimizer state).
        probe: the probe name written into the report.
        device: the device name written into the report.
        warmup: run one untracked step first.
    """
    if warmup:
        prepared.run()
    tracker = StorageTracker()
    tracker.track_step(prepared)
    return tracker.report(probe=probe, device=device, case_key=prepared.key)


def measure(
    case: TrainingCase,
    *,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> MemoryReport:
    """Measure the second training step of ``case`` with real tensors on ``device``."""
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    prepared = build_step(case, device=target, generator=generator)
    return measure_step(prepared, probe="dispatch", device=str(target))
