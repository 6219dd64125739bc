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
:class:`~profl_core.fl.observer.StepObserver` callbacks: a block's backward starts when the
gradient of its output is ready (a tensor hook registered only on outputs that require grad),
so frozen blocks run under ``no_grad`` have a forward segment and no backward segment, and no
hook is ever put on a ``requires_grad=False`` tensor (which is why PyTorch's ``MemTracker``
fails on frozen prefixes). Ops outside any block are attributed to the ``loss`` segment
(forward and backward) and the ``optimizer`` segment (step and ``zero_grad``).

The counting itself, the peaks and the report are the
:class:`~profl_core.memory.storage_ledger.StorageLedger`'s; on CUDA each storage is rounded up
to 512 B like the caching allocator; CPU bytes are exact.

What it counts is the *tensor* peak (``tensor_peak_bytes``). Allocations made inside a kernel
and freed before it returns (oneDNN convolution scratch, batch-norm backward buffers, cuDNN
workspaces) are not storages and are not seen; the ``heap`` probe measures them and
``predict`` models them (:mod:`profl_core.memory.scratch`) through the per-op hook
:meth:`StorageTracker.op_scratch_bytes`, so a dispatch report has ``heap_peak_bytes=None``.
Tensors created under ``no_dispatch`` are not seen either; a storage resized outside an op
output (``UntypedStorage.resize_``) is updated only the next time an op returns it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from profl_core.fl.observer import SegmentObserver
from profl_core.memory.case import TrainingCase
from profl_core.memory.categories import Category
from profl_core.memory.report import MemoryReport, Phase
from profl_core.memory.step import PreparedStep, build_step
from profl_core.memory.storage_ledger import StorageLedger

CHECKPOINTS: tuple[str, ...] = (
    "before_step", "after_forward", "after_backward", "after_optimizer", "after_step"
)


class StorageTracker(StorageLedger, TorchDispatchMode):
    """Counts live tensor storages by category while one prepared step runs.

    Use :meth:`track_step` rather than the mode directly::

        tracker = StorageTracker()
        tracker.track_step(prepared)      # runs prepared.run() once under the mode
        report = tracker.report(probe="dispatch", device="cpu", case_key=key)

    Alongside the tensor peak it keeps a *modelled* heap peak: after every op the live bytes
    plus :meth:`op_scratch_bytes` of that op (what its kernel held on top of its outputs while
    it ran). The base class models no scratch (:attr:`models_heap` is False and reports carry
    no heap figure); ``predict`` overrides both.
    """

    # --- the mode ---------------------------------------------------------------------------

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
        self._update_peaks(self.op_scratch_bytes(func, args, kwargs, out))
        return out

    def op_scratch_bytes(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> int:
        """Bytes the op's kernel held on top of its outputs while it ran (0: none modelled).

        Called after the op returned and its outputs were counted, so the modelled heap
        during the op is :attr:`live_bytes` plus this.
        """
        return 0

    def track_outputs(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        """Count the storages an op returned (subclasses may correct sizes per op)."""
        category = self.default_category
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.track(leaf, category)

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

    def track_step(
        self,
        prepared: PreparedStep,
        *,
        listener: SegmentObserver | None = None,
        around: AbstractContextManager[Any] | None = None,
        collect: bool = True,
    ) -> None:
        """Run ``prepared`` once under the tracker (cyclic GC paused for determinism).

        Args:
            prepared: the step to run.
            listener: also told every ``enter_segment`` and ``checkpoint`` (after the tracker).
            around: entered just around the run, after what is live before the step has been
                registered (the ``heap`` probe records allocator events in it).
            collect: run a full ``gc.collect()`` first, so that cyclic garbage of earlier steps
                gives its memory back before a real step runs. The ledger counts only the
                storages it is given, so the bytes do not depend on it; ``predict`` (fake
                tensors, nothing allocated) skips it: a full collection costs about 0.3 s per
                step with a model's objects in the process.
        """
        if collect:
            gc.collect()
        self.register_step(prepared)
        self.before_step_bytes = self.live_bytes
        self.tensor_peak_bytes = self.live_bytes
        self.heap_peak_bytes = self.live_bytes
        self.peak_breakdown = self.breakdown()
        self.checkpoint("before_step")
        hooks = [
            p.register_post_accumulate_grad_hook(self._grad_hook)
            for p in prepared.trainable_parameters()
        ]
        observer = _TrackerObserver(self, prepared, listener)
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            with around if around is not None else nullcontext(), self:
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


def _state_tensors(optimizer: torch.optim.Optimizer) -> Iterable[Tensor]:
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                yield value


class _TrackerObserver(SegmentObserver):
    """Moves the tracker (and an optional listener) between segments as the step runs."""

    def __init__(
        self,
        tracker: StorageTracker,
        prepared: PreparedStep,
        listener: SegmentObserver | None = None,
    ) -> None:
        self.tracker = tracker
        self.prepared = prepared
        self.listener = listener

    def enter_segment(self, block: str, phase: str) -> None:
        self.tracker.enter_segment(block, cast(Phase, phase))
        if self.listener is not None:
            self.listener.enter_segment(block, phase)

    def checkpoint(self, name: str) -> None:
        if name == "after_optimizer":
            for tensor in _state_tensors(self.prepared.optimizer):
                self.tracker.track(tensor, Category.OPTIMIZER_STATE, retag=True)
        self.tracker.checkpoint(name)
        if self.listener is not None:
            self.listener.checkpoint(name)


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
