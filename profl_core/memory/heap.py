"""The ``heap`` probe: what the CPU allocator holds while a real step runs.

The measured (second) step runs on real CPU tensors under two recorders at once:

* the :class:`~profl_core.memory.dispatch.StorageTracker`, which gives the *tensor* peak
  (live storages, ``tensor_peak_bytes``) and its breakdown, exactly as the ``dispatch`` probe;
* :class:`AllocatorRecorder`, which records every allocation and free made through c10's CPU
  allocator (PyTorch's CPU profiler with ``profile_memory=True``; its memory events come from
  the allocator itself, so kernel-internal buffers are seen: oneDNN convolution scratch and
  reorders, batch/layer-norm backward buffers, attention workspaces).

Segment boundaries (the step's ``(block, phase)`` segments, see
:class:`~profl_core.fl.observer.SegmentObserver`) are written into the allocator trace as
profiler markers; walking the trace in time order gives the heap peak of every segment and of
the step. ``heap_peak_bytes`` = the tensor baseline (parameters, buffers, optimizer state and
the input, all live before the step) + the highest net bytes allocated since the step began.

What is counted: every c10 CPU allocation made during the measured step on the thread that
runs it (CPU autograd runs backward on that thread too), at its requested size (what
``posix_memalign`` is asked for, as memray counts it; c10's 64-byte alignment and malloc
headers are not added). What is not: allocations made on intra-op worker threads (the
profiler's state is per thread; memray, which sees every thread, agreed within 0.2 % at 1 and
2 threads on resnet18, vgg11 and cnn conv steps, see tests/unit/memory/test_memory_memray.py),
allocations of libraries that bypass c10 (MKL's own GEMM packing buffers), Python objects, and
caches built before the step (oneDNN primitive caches; the warm-up step builds them). Only one
recorder can be active at a time (the profiler is process-wide). Frees of blocks allocated before
the recorder started are not reported by the profiler; the report's ``extra`` keeps
``heap.unmatched_bytes`` (the heap's net change over the step minus the tensors' net change,
0 when every free was seen) so such a case shows.

The figure depends on the machine (oneDNN picks kernels by ISA) and on the intra-op thread
count, which :func:`measure` takes as an argument and records in the report.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar

import torch
from torch._C._profiler import _ExperimentalConfig
from torch.autograd import (
    ProfilerConfig,
    ProfilerState,
    _disable_profiler_legacy,
    _enable_profiler_legacy,
)
from torch.autograd.profiler import record_function

from profl_core.errors import ConfigError
from profl_core.fl.observer import SegmentObserver
from profl_core.memory.case import TrainingCase
from profl_core.memory.dispatch import StorageTracker
from profl_core.memory.report import MemoryReport
from profl_core.memory.step import PreparedStep, build_step
from profl_core.memory.storage_ledger import HeapPeaks

MARK_PREFIX = "profl.heap.mark:"

T = TypeVar("T")


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[int]:
    """Run the body with ``torch.set_num_threads(threads)``; restore the previous count after.

    Args:
        threads: intra-op threads, 1 or more; ``None`` keeps the current count.

    Yields:
        the thread count in effect.

    Raises:
        ConfigError: for a count below 1.
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}; use 1 or more")
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@dataclass(frozen=True)
class AllocatorEvent:
    """One entry of an allocator trace.

    Attributes:
        nbytes: bytes allocated (positive) or freed (negative); 0 for a mark.
        mark: the index of a :meth:`AllocatorRecorder.mark`, or ``None`` for an allocation.
    """

    nbytes: int
    mark: int | None = None


class AllocatorRecorder:
    """Records c10 CPU allocator events while active (a context manager).

    It runs PyTorch's CPU-only (legacy) autograd profiler with ``profile_memory=True``: the
    c10 CPU allocator reports every allocation and free to it, records come back per thread in
    the order they happened, and, unlike the Kineto profiler, it logs nothing to stderr (Kineto
    prints two lines per session, and the scratch model starts one per op signature). Both
    see the same allocator events (checked: the same bytes on resnet18 ``grow:2``).

    ``mark()`` puts a numbered marker into the trace; :attr:`events` (after exit) lists
    allocations, frees and marks in order: exact within a thread, by the profiler's
    microsecond clock across threads (a thread's events keep their order).
    """

    def __init__(self) -> None:
        self._marks = 0
        self._active = False
        self.events: list[AllocatorEvent] = []

    def __enter__(self) -> AllocatorRecorder:
        config = ProfilerConfig(ProfilerState.CPU, False, True, False, False, False,
                                _ExperimentalConfig())  # record_shapes=False, profile_memory
        _enable_profiler_legacy(config)
        self._active = True
        return self

    def mark(self) -> int:
        """Insert the next marker into the trace; returns its index."""
        index = self._marks
        self._marks += 1
        with record_function(f"{MARK_PREFIX}{index}"):
            pass
        return index

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._active:
            return
        self._active = False
        threads = _disable_profiler_legacy()
        if kind is not None:
            return
        start = next((r for records in threads for r in records
                      if r.name() == "__start_profile"), None)
        rows: list[tuple[float, int, int, AllocatorEvent]] = []
        for thread_index, records in enumerate(threads):
            clock = 0.0
            for position, record in enumerate(records):
                if start is not None:  # keep a thread's order even if its clock ties
                    clock = max(clock, float(start.cpu_elapsed_us(record)))
                event = _event(record)
                if event is not None:
                    rows.append((clock, thread_index, position, event))
        rows.sort(key=lambda row: row[:3])
        self.events = [row[3] for row in rows]

    def net_bytes(self) -> int:
        """Bytes allocated minus bytes freed over the whole trace."""
        return sum(e.nbytes for e in self.events)

    def peak_bytes(self) -> int:
        """The highest net bytes allocated since the recorder started (0 if never above)."""
        live = peak = 0
        for event in self.events:
            live += event.nbytes
            peak = max(peak, live)
        return peak


def _event(record: Any) -> AllocatorEvent | None:
    """An allocator event or a mark from one legacy profiler record (``None``: neither)."""
    kind = record.kind()
    if kind == "memory_alloc":
        nbytes = int(record.cpu_memory_usage())
        return AllocatorEvent(nbytes=nbytes) if nbytes else None
    if kind == "push" and record.name().startswith(MARK_PREFIX):
        return AllocatorEvent(nbytes=0, mark=int(record.name()[len(MARK_PREFIX):]))
    return None


def transient_bytes(run: Callable[[], T]) -> tuple[T, int, int]:
    """Run ``run()`` under an :class:`AllocatorRecorder`.

    Returns:
        ``(result, peak, net)``: the result, the highest net bytes allocated while it ran
        and the net bytes still allocated when it returned (its result's storages).
    """
    with AllocatorRecorder() as recorder:
        result = run()
    return result, recorder.peak_bytes(), recorder.net_bytes()


class _MarkingObserver(SegmentObserver):
    """Writes a marker into the allocator trace at every segment boundary."""

    def __init__(self, recorder: AllocatorRecorder) -> None:
        self.recorder = recorder
        self.segments: list[tuple[str, str]] = []

    def enter_segment(self, block: str, phase: str) -> None:
        index = self.recorder.mark()
        assert index == len(self.segments)
        self.segments.append((block, phase))


def heap_peaks(
    events: list[AllocatorEvent], segments: list[tuple[str, str]], *, before_step_bytes: int
) -> HeapPeaks:
    """Fold an allocator trace into the step's and every segment's heap peak.

    Args:
        events: the trace (allocations and marks in time order).
        segments: ``(block, phase)`` of mark ``i`` at index ``i``.
        before_step_bytes: bytes live before the trace began (added to every peak).
    """
    level = peak = 0
    peak_at: tuple[str, str] | None = None
    current: tuple[str, str] | None = None
    by_segment: dict[tuple[str, str], int] = {}
    for event in events:
        if event.mark is not None:
            current = segments[event.mark]
            by_segment[current] = max(by_segment.get(current, level), level)
            continue
        level += event.nbytes
        if level > peak:
            peak, peak_at = level, current
        if current is not None and level > by_segment[current]:
            by_segment[current] = level
    return HeapPeaks(
        heap_peak_bytes=before_step_bytes + peak,
        peak_at=peak_at,
        segments={key: before_step_bytes + n for key, n in by_segment.items()},
    )


def measure_step(
    prepared: PreparedStep, *, threads: int | None = None, warmup: bool = True
) -> MemoryReport:
    """Measure one prepared CPU step's tensor and heap peaks in one run.

    Args:
        prepared: the step on CPU tensors (its first run is the warm-up).
        threads: intra-op threads for the warm-up and the measured run (restored after);
            ``None`` keeps the current count.
        warmup: run one unrecorded step first (creates optimizer state, oneDNN primitives).
    """
    with intra_op_threads(threads) as used:
        if warmup:
            prepared.run()
        gc.collect()
        tracker = StorageTracker()
        recorder = AllocatorRecorder()
        observer = _MarkingObserver(recorder)
        tracker.track_step(prepared, listener=observer, around=recorder)
    heap = heap_peaks(recorder.events, observer.segments,
                      before_step_bytes=tracker.before_step_bytes)
    report = tracker.report(
        probe="heap", device="cpu", case_key=prepared.key, heap=heap, threads=used
    )
    tensor_net = tracker.live_bytes - tracker.before_step_bytes
    extra = {**report.extra, "heap.unmatched_bytes": recorder.net_bytes() - tensor_net}
    return replace(report, extra=extra)


def measure(
    case: TrainingCase,
    *,
    threads: int | None = None,
    generator: torch.Generator | None = None,
) -> MemoryReport:
    """Measure the second training step of ``case`` on real CPU tensors: tensor and heap peaks.

    Args:
        case: what to train.
        threads: intra-op threads for the measurement (restored after); ``None`` keeps the
            current ``torch.get_num_threads()``.
        generator: seeds weights and batch (see :func:`~profl_core.memory.step.build_step`).
    """
    prepared = build_step(case, device="cpu", generator=generator)
    return measure_step(prepared, threads=threads)
