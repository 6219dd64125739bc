"""The ``cuda`` probe: CUDA caching-allocator counters read and reset at block boundaries.

:func:`measure` runs each case in a fresh Python process (TorchBench's rule: the caching
allocator's pool and cuDNN/cuBLAS state of earlier cases must not leak into a measurement). The
child reads the case as JSON (:meth:`TrainingCase.params`) on stdin, builds the client step on
the GPU (:func:`~profl_core.memory.step.build_step`), runs the warm-up step, measures the second
step with :func:`measure_step` and prints :meth:`MemoryReport.to_json`; the parent parses it.
:func:`measure_step` measures in the calling process, for callers that already hold a step.

At every segment boundary (the same ``(block, phase)`` segments as the dispatch probe, see
:class:`~profl_core.fl.observer.SegmentObserver`) the probe reads
``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` for the segment that just
ended and calls ``torch.cuda.reset_peak_memory_stats``; the step's peak is the largest segment
peak. Allocator counters are host-side bookkeeping, so no synchronisation is needed to read
them. There is no per-category breakdown.

What the numbers count. *Allocated* (the report's ``tensor_peak_bytes``, which on CUDA cannot
tell storages from workspaces, ``extra["allocated_peak_bytes"]``, the block peaks; the
report's ``heap_peak_bytes``, a CPU-allocator figure, stays ``None``): every block the caching
allocator handed out, so tensor storages rounded up to 512 B (a large block also keeps a
remainder under 1 MiB that was not worth splitting off), plus
cuDNN convolution workspaces and cuBLAS workspaces (allocated through the caching
allocator; the cuBLAS one is created in the warm-up step and stays, so it is part of
``before_step_bytes``). *Requested* (``extra["requested_peak_bytes"]``): the bytes the
allocations asked for, before the allocator's rounding (0 where torch lacks the counter).
*Reserved* (``extra["reserved_peak_bytes"]``, before the step
``extra["reserved_baseline_bytes"]``): the segments the allocator holds from the driver, i.e.
allocated plus its cached free blocks and the rounding of segments (2 MiB for small blocks,
larger for big ones). None of them includes the CUDA context (driver, kernels, a few hundred MiB
per process, outside the allocator) nor memory allocated outside PyTorch's allocator.
"""

from __future__ import annotations

import gc
from typing import Any

import torch

from profl_core.errors import ConfigError
from profl_core.fl.observer import SegmentObserver
from profl_core.memory.case import TrainingCase
from profl_core.memory.report import BlockPeak, MemoryReport, Phase
from profl_core.memory.step import PreparedStep
from profl_core.memory.subprocess_probe import run_fresh

REQUESTED_PEAK_STAT = "requested_bytes.all.peak"

_CHILD = """
import json, sys
import torch
from profl_core.memory.case import TrainingCase
from profl_core.memory.step import build_step
from profl_core.methods.registry import load_plugins
load_plugins()  # a plugin method's memory kinds
from profl_core.memory.cuda import measure_step
request = json.loads(sys.stdin.read())
device = torch.device(request["device"])
torch.cuda.set_device(device)
generator = None
if request["generator_state"] is not None:
    generator = torch.Generator()
    generator.set_state(torch.tensor(request["generator_state"], dtype=torch.uint8))
case = TrainingCase.from_params(request["case"])
prepared = build_step(case, device=device, generator=generator)
print(measure_step(prepared, device=device).to_json())
"""


class _AllocatorObserver(SegmentObserver):
    """Folds allocator peaks into per-segment peaks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current: tuple[str, Phase] | None = None
        self.segments: dict[tuple[str, Phase], int] = {}
        self.allocated_peak_bytes = 0
        self.reserved_peak_bytes = 0
        self.requested_peak_bytes = 0
        self.peak_at: tuple[str, str] | None = None

    def close(self) -> None:
        """Charge the allocator peak since the last reset to the current segment."""
        allocated = torch.cuda.max_memory_allocated(self.device)
        reserved = torch.cuda.max_memory_reserved(self.device)
        self.reserved_peak_bytes = max(self.reserved_peak_bytes, reserved)
        requested = torch.cuda.memory_stats(self.device).get(REQUESTED_PEAK_STAT, 0)
        self.requested_peak_bytes = max(self.requested_peak_bytes, int(requested))
        if self.current is not None:
            self.segments[self.current] = max(self.segments.get(self.current, 0), allocated)
            if allocated > self.allocated_peak_bytes:
                self.allocated_peak_bytes = allocated
                self.peak_at = self.current
        torch.cuda.reset_peak_memory_stats(self.device)

    def enter_segment(self, block: str, phase: str) -> None:
        self.close()
        self.current = (block, phase)  # type: ignore[assignment]

    def after_step(self) -> None:
        self.close()
        self.current = None


def measure_step(prepared: PreparedStep, *, device: torch.device) -> MemoryReport:
    """Measure the second run of a prepared CUDA step in this process (the first run is the
    warm-up); whatever this process allocated or cached before stays in the counters."""
    prepared.run()
    torch.cuda.synchronize(device)
    gc.collect()
    baseline = torch.cuda.memory_allocated(device)
    reserved_baseline = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    observer = _AllocatorObserver(device)
    observer.allocated_peak_bytes = baseline
    prepared.run(observer)
    torch.cuda.synchronize(device)
    return MemoryReport(
        probe="cuda",
        device=str(device),
        case_key=prepared.key,
        before_step_bytes=baseline,
        tensor_peak_bytes=observer.allocated_peak_bytes,
        peak_breakdown={},
        peak_at=observer.peak_at,
        blocks=tuple(
            BlockPeak(block=block, phase=phase, tensor_peak_bytes=nbytes)
            for (block, phase), nbytes in observer.segments.items()
        ),
        extra={
            "reserved_peak_bytes": observer.reserved_peak_bytes,
            "reserved_baseline_bytes": reserved_baseline,
            "allocated_peak_bytes": observer.allocated_peak_bytes,
            "requested_peak_bytes": observer.requested_peak_bytes,
        },
    )


def cuda_device(device: str | torch.device) -> torch.device:
    """Resolve ``device`` to an indexed CUDA device; ConfigError without one."""
    if not torch.cuda.is_available():
        raise ConfigError("cuda probe needs a CUDA device; use --probe dispatch or predict")
    target = torch.device(device)
    if target.type != "cuda":
        raise ConfigError(f"cuda probe: device={device!r}; use cuda or cuda:N")
    index = torch.cuda.current_device() if target.index is None else target.index
    return torch.device("cuda", index)


def measure(
    case: TrainingCase,
    *,
    device: str | torch.device = "cuda",
    generator: torch.Generator | None = None,
    timeout_s: float = 600.0,
) -> MemoryReport:
    """Measure the second training step of ``case`` with the allocator counters, in a fresh
    process.

    Args:
        case: what to train.
        device: ``cuda`` or ``cuda:N``.
        generator: seeds the weights, new modules and batch as in
            :func:`~profl_core.memory.step.build_step` (the child starts from its state; it is
            advanced here as ``build_step`` would); ``None`` uses seed 0.
        timeout_s: give up on the child after this many seconds.

    Raises:
        ConfigError: without a CUDA device or for a non-CUDA ``device`` (before any process
            is started), and in one line naming the case and the child's last stderr line
            when the child fails.
    """
    target = cuda_device(device)
    request: dict[str, Any] = {
        "case": case.params(),
        "device": str(target),
        "generator_state": None if generator is None else generator.get_state().tolist(),
    }
    if generator is not None:  # the draw build_step makes, so the caller's stream moves on
        torch.randint(0, 2**62, (1,), generator=generator)
    answer = run_fresh(_CHILD, request, what=f"cuda probe: the process measuring {case.key}",
                       timeout_s=timeout_s)
    return MemoryReport.from_json(answer)
