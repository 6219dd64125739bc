"""The memory table: one :class:`MemoryReport` per training case.

Methods look up ``required_bytes`` here (never from a parameter ratio) to decide which devices
can train which sub-model.
"""

from __future__ import annotations

from collections.abc import Iterable

from profl_core.errors import ConfigError
from profl_core.memory import measure
from profl_core.memory.case import TrainingCase
from profl_core.memory.report import MemoryReport


def memory_table(
    cases: Iterable[TrainingCase], *, probe: str = "predict"
) -> dict[str, MemoryReport]:
    """Measure every case with ``probe``; keyed by :attr:`TrainingCase.key`, in input order.

    Raises:
        ConfigError: when two cases share a key (the table would silently drop one).
    """
    table: dict[str, MemoryReport] = {}
    for case in cases:
        if case.key in table:
            raise ConfigError(f"memory table: case {case.key} appears twice; list it once")
        table[case.key] = measure(case, probe=probe)
    return table


def required_bytes_table(
    cases: Iterable[TrainingCase], *, probe: str = "predict"
) -> dict[str, int]:
    """``required_bytes`` of every case, keyed by :attr:`TrainingCase.key`."""
    return {key: r.required_bytes for key, r in memory_table(cases, probe=probe).items()}
