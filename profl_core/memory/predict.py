"""The ``predict`` probe: the dispatch tracker on fake tensors.

The model is constructed on the ``meta`` device (no weights, no initialisation maths), then its
parameters and buffers are replaced by empty ``FakeTensorMode`` tensors on device ``cpu``
(``Module.to``/``to_empty`` fail on fake tensors, and some initialisers such as
``trunc_normal_`` make data-dependent calls that fake tensors refuse). The optimizer, batch,
warm-up step and measured step then all run on fake tensors, and
:class:`~profl_core.memory.dispatch.StorageTracker` counts their storages. Nothing is
allocated, and the bytes equal the ``dispatch`` probe on real CPU tensors byte for byte.

A real CPU kernel occasionally returns a storage larger than its fake kernel says (the 0-d
result of ``mse_loss`` keeps an input-sized buffer); :data:`REAL_STORAGE_BYTES` corrects those
ops so the two probes agree byte for byte.

What it cannot see: kernel-internal scratch, allocator rounding and caching, the CUDA context.
The predicted step is the CPU step (single-tensor optimizer loops); a CUDA step uses the
``foreach`` optimizer kernels, whose temporaries are larger; measure those with ``dispatch``
or ``cuda`` on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensorMode

from profl_core.memory.case import PreparedStep, TrainingCase, build_fake_step
from profl_core.memory.dispatch import StorageTracker
from profl_core.memory.report import MemoryReport

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


class FakeStorageTracker(StorageTracker):
    """The storage tracker with the real CPU storage size of a few ops (see module doc)."""

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


def measure_fake(make: Callable[[], PreparedStep]) -> MemoryReport:
    """Predict the second run of the step ``make()`` builds inside ``FakeTensorMode`` on the CPU
    (``make`` builds with ``fake=True``, e.g. :func:`~profl_core.memory.case.build_fake_step`
    or :func:`~profl_core.memory.case.method_step`)."""
    # Real CPU constants of a method (HeteroFL's label mask) become fake when used.
    with FakeTensorMode(allow_non_fake_inputs=True), torch.device("cpu"):
        prepared = make()
        prepared.run()  # warm-up
        tracker = FakeStorageTracker()
        tracker.track_step(prepared)
        return tracker.report(probe="predict", device="cpu", case_key=prepared.key)


def measure(case: TrainingCase) -> MemoryReport:
    """Predict the second training step of ``case`` on the CPU without allocating."""
    return measure_fake(lambda: build_fake_step(case))
