"""Per-block training memory: cases, probes, reports and the memory table (DESIGN §3).

``measure(case, probe=...)`` measures the second training step of a
:class:`~profl_core.memory.case.TrainingCase` and returns a
:class:`~profl_core.memory.report.MemoryReport`. Probes:

* ``predict`` (default): the dispatch tracker on fake CPU tensors; nothing is allocated.
* ``dispatch``: live-storage accounting on real tensors (CPU or CUDA).
* ``cuda``: CUDA allocator counters read at block boundaries.
* ``rss``: process RSS delta in fresh subprocesses (noisy; no blocks).
"""

from __future__ import annotations

import torch

from profl_core.errors import ConfigError
from profl_core.memory import cuda, dispatch, predict, rss
from profl_core.memory.case import (
    KINDS,
    PreparedStep,
    StepObserver,
    TrainingCase,
    all_cases,
    build_step,
    case_from_text,
    parse_case,
)
from profl_core.memory.categories import Category
from profl_core.memory.report import BlockPeak, MemoryReport

PROBES: tuple[str, ...] = ("dispatch", "predict", "cuda", "rss")


def measure(
    case: TrainingCase, *, probe: str = "predict", device: str | torch.device | None = None
) -> MemoryReport:
    """Measure the second training step of ``case`` with one probe.

    Args:
        case: what to train.
        probe: one of :data:`PROBES`.
        device: ``None`` picks the probe's device (``cuda`` for the cuda probe, else ``cpu``);
            ``predict`` and ``rss`` run on the CPU only.

    Raises:
        ConfigError: for an unknown probe or a device the probe cannot use.
    """
    if probe not in PROBES:
        raise ConfigError(f"probe {probe!r}; use one of {', '.join(PROBES)}")
    target = torch.device(device) if device is not None else None
    if probe == "cuda":
        return cuda.measure(case, device=target if target is not None else "cuda")
    if probe in ("predict", "rss") and target is not None and target.type != "cpu":
        raise ConfigError(f"probe {probe} runs on the CPU only; drop --device or use cpu")
    if probe == "predict":
        return predict.measure(case)
    if probe == "rss":
        return rss.measure(case)
    return dispatch.measure(case, device=target if target is not None else "cpu")


__all__ = [
    "KINDS",
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
