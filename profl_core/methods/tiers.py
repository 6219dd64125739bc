"""Memory tiers: each device gets the largest sub-model whose measured peak fits its budget.

Used by every baseline with several sub-model sizes (HeteroFL and FedRolex widths, DepthFL and
InclusiveFL depths). ``required_bytes`` always comes from the memory table (measured peak at the
run's batch size), never from a parameter ratio. The assignment is HeteroFL's *fix* mode: a
device keeps its tier for the whole run (baselines.md §2.1). Devices that fit no option never
take part.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.selection import require_trainable, required
from profl_core.fl.types import MemoryTable


def largest_fitting(
    budget_bytes: int, options: Sequence[str], memory_table: MemoryTable
) -> str | None:
    """The first of ``options`` (ordered largest first) that fits ``budget_bytes``."""
    for name in options:
        if required(memory_table, name) <= budget_bytes:
            return name
    return None


def assign(fleet: Fleet, options: Sequence[str], memory_table: MemoryTable) -> dict[int, str]:
    """Device id -> the largest option it fits; devices fitting none are left out."""
    out: dict[int, str] = {}
    for device in fleet.devices:
        name = largest_fitting(device.budget_bytes, options, memory_table)
        if name is not None:
            out[device.device_id] = name
    return out


def require_some_fit(fleet: Fleet, options: Sequence[str], memory_table: MemoryTable) -> None:
    """A one-line ConfigError when no device of ``fleet`` fits the smallest of ``options``."""
    smallest = options[-1]
    require_trainable(fleet, required(memory_table, smallest), smallest)


def select_tiered(
    fleet: Fleet,
    options: Sequence[str],
    memory_table: MemoryTable,
    per_round: int,
    rng: np.random.Generator,
) -> list[tuple[int, str]]:
    """Draw up to ``per_round`` devices that fit some option; each with its largest option.

    Raises:
        ConfigError: When no device fits even the smallest option.
    """
    if per_round < 1:
        raise ConfigError(f"per_round={per_round}; use 1 or more clients per round")
    tiers = assign(fleet, options, memory_table)
    if not tiers:
        require_some_fit(fleet, options, memory_table)
    pool = np.array(sorted(tiers), dtype=np.int64)
    chosen = rng.choice(pool, size=min(per_round, pool.size), replace=False)
    return [(int(cid), tiers[int(cid)]) for cid in sorted(chosen)]
