"""The ``cuda`` probe: CUDA caching-allocator counters read and reset at block boundaries.

At every segment boundary (the same ``(block, phase)`` segments as the dispatch probe, see
:class:`~profl_core.memory.case.SegmentObserver`) the probe reads
``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` for the segment that just
ended and calls ``torch.cuda.reset_peak_memory_stats``; the step's peak is the largest segment
peak. Allocator counters are host-side bookkeeping, so no synchronisation is needed to read
them. The numbers include allocator rounding (512 B blocks) and cuDNN/cuBLAS workspaces, but
not the CUDA context; there is no per-category breakdown.
"""

from __future__ import annotations

import gc

import torch

from profl_core.errors import ConfigError
from profl_core.memory.case import PreparedStep, SegmentObserver, TrainingCase, build_step
from profl_core.memory.report import BlockPeak, MemoryReport, Phase


class _AllocatorObserver(SegmentObserver):
    """Folds allocator peaks into per-segment peaks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.current: tuple[str, Phase] | None = None
        self.segments: dict[tuple[str, Phase], int] = {}
        self.peak_bytes = 0
        self.reserved_peak_bytes = 0
        self.peak_at: tuple[str, str] | None = None

    def close(self) -> None:
        """Charge the allocator peak since the last reset to the current segment."""
        allocated = torch.cuda.max_memory_allocated(self.device)
        reserved = torch.cuda.max_memory_reserved(self.device)
        self.reserved_peak_bytes = max(self.reserved_peak_bytes, reserved)
        if self.current is not None:
            self.segments[self.current] = max(self.segments.get(self.current, 0), allocated)
            if allocated > self.peak_bytes:
                self.peak_bytes = allocated
                self.peak_at = self.current
        torch.cuda.reset_peak_memory_stats(self.device)

    def enter_segment(self, block: str, phase: str) -> None:
        self.close()
        self.current = (block, phase)  # type: ignore[assignment]

    def after_step(self) -> None:
        self.close()
        self.current = None


def measure_step(prepared: PreparedStep, *, device: torch.device) -> MemoryReport:
    """Measure the second step of a prepared CUDA step (its first run is the warm-up)."""
    prepared.run()
    torch.cuda.synchronize(device)
    gc.collect()
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    observer = _AllocatorObserver(device)
    observer.peak_bytes = baseline
    prepared.run(observer)
    torch.cuda.synchronize(device)
    return MemoryReport(
        probe="cuda",
        device=str(device),
        case_key=prepared.key,
        baseline_bytes=baseline,
        peak_bytes=observer.peak_bytes,
        peak_breakdown={},
        peak_at=observer.peak_at,
        blocks=tuple(
            BlockPeak(block=block, phase=phase, peak_bytes=nbytes)
            for (block, phase), nbytes in observer.segments.items()
        ),
        extra={
            "reserved_peak_bytes": observer.reserved_peak_bytes,
            "allocated_peak_bytes": observer.peak_bytes,
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
) -> MemoryReport:
    """Measure the second training step of ``case`` with the allocator counters."""
    target = cuda_device(device)
    prepared = build_step(case, device=target, generator=generator)
    return measure_step(prepared, device=target)
