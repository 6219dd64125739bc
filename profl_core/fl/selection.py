"""Memory-aware client selection (profl-paper.md §1.7).

Each round, clients are drawn uniformly without replacement from the devices whose budget
covers the sub-model's required bytes (taken from the measured memory table).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from profl_core.devices import Fleet
from profl_core.errors import ConfigError

MIB = 2**20


def required(memory_table: Mapping[str, int], name: str) -> int:
    """``required_bytes`` of sub-model ``name``, or a one-line ConfigError when it is missing."""
    if name not in memory_table:
        raise ConfigError(f"memory table has no entry for {name!r}; measure the method's cases "
                          f"(have: {', '.join(sorted(memory_table))})")
    return int(memory_table[name])


def eligible_ids(fleet: Fleet, required_bytes: int) -> np.ndarray:
    """Ids of the devices with ``budget_bytes >= required_bytes``, in fleet order."""
    return np.array(
        [d.device_id for d in fleet.devices if d.budget_bytes >= required_bytes], dtype=np.int64
    )


def require_trainable(fleet: Fleet, required_bytes: int, submodel: str) -> None:
    """Raise a one-line ConfigError when no device of ``fleet`` can train ``submodel``."""
    if eligible_ids(fleet, required_bytes).size:
        return
    largest = max((d.budget_bytes for d in fleet.devices), default=0)
    raise ConfigError(
        f"no device of fleet {fleet.name!r} can train {submodel}: it needs "
        f"{required_bytes / MIB:.1f} MiB, the largest budget is {largest / MIB:.1f} MiB; "
        "use a larger fleet, a smaller batch size or a smaller model"
    )


def select_clients(
    fleet: Fleet,
    required_bytes: int,
    per_round: int,
    rng: np.random.Generator,
    *,
    submodel: str,
) -> list[int]:
    """Draw up to ``per_round`` eligible clients uniformly without replacement.

    Args:
        fleet: The devices.
        required_bytes: Peak memory of the sub-model; devices below it are never chosen.
        per_round: Clients per round (all eligible ones when fewer are eligible).
        rng: Source of randomness.
        submodel: Name used in the error message.

    Returns:
        Sorted client (device) ids.

    Raises:
        ConfigError: When no device can train the sub-model.
    """
    if per_round < 1:
        raise ConfigError(f"per_round={per_round}; use 1 or more clients per round")
    require_trainable(fleet, required_bytes, submodel)
    pool = eligible_ids(fleet, required_bytes)
    k = min(per_round, pool.size)
    return sorted(int(i) for i in rng.choice(pool, size=k, replace=False))


def select_any(fleet: Fleet, per_round: int, rng: np.random.Generator) -> list[int]:
    """Draw up to ``per_round`` clients from the whole fleet, ignoring memory."""
    if per_round < 1:
        raise ConfigError(f"per_round={per_round}; use 1 or more clients per round")
    ids = np.array([d.device_id for d in fleet.devices], dtype=np.int64)
    k = min(per_round, ids.size)
    return sorted(int(i) for i in rng.choice(ids, size=k, replace=False))
