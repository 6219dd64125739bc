"""Per-block training memory: cases, probes, reports and the memory table (DESIGN §3).

``measure(case, probe=...)`` measures the second training step of a
:class:`~profl_core.memory.case.TrainingCase` and returns a
:class:`~profl_core.memory.report.MemoryReport`. Probes:

* ``predict`` (default): the dispatch tracker on fake CPU tensors; nothing is allocated for
  the step. Tensor peak exact; heap peak modelled from per-op kernel scratch measured once per
  op signature and thread count (:mod:`profl_core.memory.scratch`).
* ``dispatch``: live-storage accounting on real tensors (CPU or CUDA): the tensor peak only.
* ``heap``: real CPU step; tensor peak from the dispatch tracker and heap peak from the CPU
  allocator's own events, kernel scratch included (:mod:`profl_core.memory.heap`).
* ``cuda``: CUDA allocator counters read at block boundaries.
* ``rss``: process RSS delta in fresh subprocesses (noisy; no blocks).

Every report has ``tensor_peak_bytes``; ``heap_peak_bytes`` is set by ``heap`` and
``predict``; ``required_bytes`` is the heap figure when known, else the tensor figure.
"""

from __future__ import annotations

import torch

from profl_core.errors import ConfigError
from profl_core.fl.observer import StepObserver
from profl_core.memory import cuda, dispatch, heap, predict, rss
from profl_core.memory.case import TrainingCase, all_cases
from profl_core.memory.case_text import case_from_text, parse_case
from profl_core.memory.categories import Category
from profl_core.memory.report import BlockPeak, MemoryReport
from profl_core.memory.step import PreparedStep, build_step

PROBES: tuple[str, ...] = ("dispatch", "predict", "heap", "cuda", "rss")
CPU_ONLY_PROBES: tuple[str, ...] = ("predict", "heap", "rss")


def measure(
    case: TrainingCase,
    *,
    probe: str = "predict",
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> MemoryReport:
    """Measure the second training step of ``case`` with one probe.

    Args:
        case: what to train.
        probe: one of :data:`PROBES`.
        device: ``None`` picks the probe's device (``cuda`` for the cuda probe, else ``cpu``);
            ``predict``, ``heap`` and ``rss`` run on the CPU only.
        threads: intra-op threads (``torch.set_num_threads``) while measuring, restored after;
            the heap figures of ``heap`` and ``predict`` hold for this count. ``None`` keeps
            the current count (``rss`` then uses 1 thread in its subprocesses).

    Raises:
        ConfigError: for an unknown probe, a device the probe cannot use or ``threads < 1``.
    """
    if probe not in PROBES:
        raise ConfigError(f"probe {probe!r}; use one of {', '.join(PROBES)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}; use 1 or more")
    target = torch.device(device) if device is not None else None
    if probe in CPU_ONLY_PROBES and target is not None and target.type != "cpu":
        raise ConfigError(f"probe {probe} runs on the CPU only; drop --device or use cpu")
    if probe == "predict":
        return predict.measure(case, threads=threads)
    if probe == "heap":
        return heap.measure(case, threads=threads)
    if probe == "rss":
        return rss.measure(case, threads=1 if threads is None else threads)
    if probe == "dispatch" and target is not None and target.type == "cuda":
        if not torch.cuda.is_available():  # one line before any work, not a driver traceback
            raise ConfigError(f"device {device}: no CUDA device on this machine; use cpu")
        target = cuda.cuda_device(target)
    with heap.intra_op_threads(threads):
        if probe == "cuda":
            return cuda.measure(case, device=target if target is not None else "cuda")
        return dispatch.measure(case, device=target if target is not None else "cpu")


__all__ = [
    "PROBES",
    "BlockPeak",
    "Category",
    "MemoryReport",
    "PreparedStep",
    "StepObserver",
    "TrainingCase",
    "all_cases",
    "build_step",
    "case_from_text",
    "measure",
    "parse_case",
]
