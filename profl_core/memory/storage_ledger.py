"""Live tensor storages by category, and the peaks they reach, for the ``dispatch`` probe.

:class:`StorageLedger` counts every storage it is given once (keyed by the storage object,
whose Python wrapper PyTorch keeps alive exactly as long as the storage); a weakref finalizer
notices when it is freed. Each storage has a
:class:`~profl_core.memory.categories.Category`, and a known storage can be re-tagged. After
every update the caller asks for the peaks: the live total (the *tensor* peak, with its
breakdown) and a modelled heap peak (live bytes plus scratch the caller names), overall and
per ``(block, phase)`` segment; named checkpoints snapshot the live breakdown. :meth:`report`
turns all of it into a :class:`~profl_core.memory.report.MemoryReport`. What is tracked, and
when, is up to :class:`~profl_core.memory.dispatch.StorageTracker`, the dispatch mode that
drives the ledger through one training step.

On CUDA each storage is rounded up to 512 B like the caching allocator; CPU bytes are exact.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from profl_core.memory.categories import Category
from profl_core.memory.report import BlockPeak, MemoryReport, Phase

CUDA_BLOCK_BYTES = 512


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
    tensor_peak_bytes: int
    heap_peak_bytes: int
    breakdown: dict[Category, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HeapPeaks:
    """CPU-allocator peaks of one step, absolute bytes (the tensor baseline included).

    Attributes:
        heap_peak_bytes: the step's heap peak.
        peak_at: the ``(block, phase)`` segment it happened in (``None``: outside any segment).
        segments: the heap peak of every ``(block, phase)`` segment that ran.
    """

    heap_peak_bytes: int
    peak_at: tuple[str, str] | None
    segments: Mapping[tuple[str, str], int]


class StorageLedger:
    """Live storages by category, the tensor and modelled heap peaks, segments, checkpoints.

    The base of :class:`~profl_core.memory.dispatch.StorageTracker`; its :attr:`models_heap`
    says whether the heap peak it keeps is a model worth reporting (False: reports carry no
    heap figure).
    """

    models_heap = False

    def __init__(self) -> None:
        super().__init__()  # the TorchDispatchMode after it among StorageTracker's bases
        self._entries: dict[int, _Entry] = {}
        self._by_category: dict[Category, int] = dict.fromkeys(Category, 0)
        self.live_bytes = 0
        self.tensor_peak_bytes = 0
        self.heap_peak_bytes = 0
        self.heap_peak_at: tuple[str, str] | None = None
        self.peak_breakdown: dict[Category, int] = {}
        self.peak_at: tuple[str, str] | None = None
        self.before_step_bytes = 0
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

    def _update_peaks(self, scratch_bytes: int = 0) -> None:
        live = self.live_bytes
        heap = live + scratch_bytes
        if live > self.tensor_peak_bytes:
            self.tensor_peak_bytes = live
            self.peak_breakdown = {c: n for c, n in self._by_category.items() if n}
            self.peak_at = self._current
        if heap > self.heap_peak_bytes:
            self.heap_peak_bytes = heap
            self.heap_peak_at = self._current
        if self._current is not None:
            segment = self._segments[self._current]
            if live > segment.tensor_peak_bytes:
                segment.tensor_peak_bytes = live
                segment.breakdown = {c: n for c, n in self._by_category.items() if n}
            segment.heap_peak_bytes = max(segment.heap_peak_bytes, heap)

    def breakdown(self) -> dict[Category, int]:
        """Live bytes per category now (zero categories omitted)."""
        return {c: n for c, n in self._by_category.items() if n}

    # --- segments ---------------------------------------------------------------------------

    def enter_segment(self, block: str, phase: Phase) -> None:
        """Attribute what follows to ``(block, phase)``."""
        self._current = (block, phase)
        self.default_category = Category.ACTIVATION if phase == "forward" else Category.TEMPORARY
        if self._current not in self._segments:
            self._segments[self._current] = _SegmentPeak(
                block, phase, self.live_bytes, self.live_bytes
            )
        self._update_peaks()

    def checkpoint(self, name: str) -> None:
        """Record the live breakdown under ``name`` (reported in ``extra``)."""
        self.checkpoints[name] = self.breakdown()

    # --- the report -------------------------------------------------------------------------

    def modelled_heap(self) -> HeapPeaks | None:
        """The modelled heap peaks (live bytes plus per-op scratch); ``None`` without a model."""
        if not self.models_heap:
            return None
        return HeapPeaks(
            heap_peak_bytes=self.heap_peak_bytes,
            peak_at=self.heap_peak_at,
            segments={key: s.heap_peak_bytes for key, s in self._segments.items()},
        )

    def report(
        self,
        *,
        probe: str,
        device: str,
        case_key: str,
        heap: HeapPeaks | None = None,
        threads: int | None = None,
    ) -> MemoryReport:
        """The :class:`MemoryReport` of the tracked step.

        Args:
            probe: the probe name written into the report.
            device: the device name written into the report.
            case_key: the measured case's key.
            heap: heap peaks measured elsewhere (the ``heap`` probe); ``None`` uses
                :meth:`modelled_heap` (no heap figure for the base tracker).
            threads: the thread count the heap figures hold for.
        """
        extra: dict[str, int] = {}
        for name, snapshot in self.checkpoints.items():
            extra[f"{name}.total"] = sum(snapshot.values())
            for cat, nbytes in snapshot.items():
                extra[f"{name}.{cat}"] = nbytes
        heap = heap if heap is not None else self.modelled_heap()
        return MemoryReport(
            probe=probe,
            device=device,
            case_key=case_key,
            before_step_bytes=self.before_step_bytes,
            tensor_peak_bytes=self.tensor_peak_bytes,
            peak_breakdown=dict(self.peak_breakdown),
            peak_at=self.peak_at,
            blocks=tuple(
                BlockPeak(
                    block=s.block, phase=s.phase, tensor_peak_bytes=s.tensor_peak_bytes,
                    breakdown=dict(s.breakdown),
                    heap_peak_bytes=None if heap is None else heap.segments.get(key),
                )
                for key, s in self._segments.items()
            ),
            extra=extra,
            heap_peak_bytes=None if heap is None else heap.heap_peak_bytes,
            heap_peak_at=None if heap is None else heap.peak_at,
            threads=threads if heap is not None else None,
        )
