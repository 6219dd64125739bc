"""Memory-aware selection: only fitting devices, and a clear error when none fits."""

import numpy as np
import pytest

from profl_core.devices import Device, Fleet
from profl_core.errors import ConfigError
from profl_core.fl.selection import select_any, select_clients

MIB = 2**20


def fleet_of(budgets_mib: list[int]) -> Fleet:
    """A hand-made fleet with budgets in MiB."""
    return Fleet(
        "hand", tuple(Device(device_id=i, budget_bytes=b * MIB) for i, b in enumerate(budgets_mib))
    )


def test_only_devices_whose_budget_fits_are_selected() -> None:
    """Over many rounds every chosen device has budget >= required (equality allowed)."""
    # Prepare
    fleet = fleet_of([100, 200, 300, 400, 500, 600, 700, 800])
    rng = np.random.default_rng(0)
    required = 400 * MIB
    # Execute
    chosen = [select_clients(fleet, required, 3, rng, submodel="grow:1") for _ in range(200)]
    # Assert
    seen = {cid for ids in chosen for cid in ids}
    assert seen == {3, 4, 5, 6, 7}
    assert all(len(ids) == 3 == len(set(ids)) for ids in chosen)


def test_fewer_eligible_than_per_round_takes_all_eligible() -> None:
    """With two eligible devices and per_round 5, both take part."""
    fleet = fleet_of([100, 900, 950])
    assert select_clients(fleet, 800 * MIB, 5, np.random.default_rng(0), submodel="full") == [1, 2]


def test_step_no_device_can_train_is_a_config_error() -> None:
    """The message names the step, its MiB and the largest budget."""
    fleet = fleet_of([100, 250])
    with pytest.raises(ConfigError, match=r"grow:1: it needs 300\.0 MiB.*largest budget is 250\.0"):
        select_clients(fleet, 300 * MIB, 2, np.random.default_rng(0), submodel="grow:1")


def test_select_any_ignores_memory() -> None:
    """FedAvg's all-device policy draws from the whole fleet."""
    fleet = fleet_of([1, 2, 3, 4])
    ids = select_any(fleet, 4, np.random.default_rng(0))
    assert ids == [0, 1, 2, 3]
