"""Reading fleets: ``devices/fleets/<name>.toml``, a list of devices with their budgets.

The file's ``kind`` says how the list is built (:mod:`profl_core.devices.fleet_kinds`); budgets
given in a unit (``budget_unit = "MiB"``) or as fractions of a reference peak become integer
bytes here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from profl_core.devices.fleet_kinds import (
    FLEET_KEYS,
    PPM,
    Row,
    explicit_rows,
    mix_rows,
    relative_ppm,
    uniform_rows,
)
from profl_core.devices.types import FLEET_KINDS, RELATIVE_KINDS, Device, DeviceProfile, Fleet
from profl_core.devices.validation import Table, check_name, read_table, toml_files
from profl_core.errors import ConfigError


def _fleet_header(path: Path) -> tuple[Table, str, str]:
    table = read_table(path)
    kind = table.string("kind", 'add kind = "uniform"', choices=FLEET_KINDS)
    table.check_keys(FLEET_KEYS[kind])
    name = check_name(table, path)
    if "description" in table.data:
        table.string("description", "use a one-line string or remove it")
    return table, name, kind


def fleet_needs_reference(path: Path) -> bool:
    """Whether the fleet's budgets are fractions of a reference (full-model) peak.

    Args:
        path: A fleet file.

    Returns:
        True for ``relative`` and ``tiers`` fleets.

    Raises:
        ConfigError: If the file cannot be read or its ``kind`` is invalid.
    """
    table = read_table(path)
    return table.string("kind", 'add kind = "uniform"', choices=FLEET_KINDS) in RELATIVE_KINDS


def load_fractions(path: Path) -> np.ndarray:
    """The budgets of a ``relative`` or ``tiers`` fleet as fractions of the reference peak.

    Args:
        path: A relative or tiers fleet file.

    Returns:
        One float per device, in fleet order (resolution: one part per million).

    Raises:
        ConfigError: If the file is invalid or its budgets are absolute.
    """
    table, _, kind = _fleet_header(path)
    if kind not in RELATIVE_KINDS:
        table.fail("kind", "only relative and tiers fleets have fractional budgets")
    return np.array([ppm for ppm, _ in relative_ppm(table, kind)], dtype=np.float64) / PPM


def load_fleet(
    path: Path,
    profiles: Mapping[str, DeviceProfile],
    *,
    reference_peak_bytes: int | None = None,
) -> Fleet:
    """Read, validate and build one fleet.

    Args:
        path: A ``devices/fleets/<name>.toml`` file.
        profiles: Known profiles by name (see :func:`~profl_core.devices.profiles.load_profiles`).
        reference_peak_bytes: The run's full-model training peak in bytes; required by
            ``relative`` and ``tiers`` fleets, ignored by the others.

    Returns:
        The fleet; every device has a positive budget.

    Raises:
        ConfigError: On any invalid field, unknown profile, missing or non-positive reference
            peak, or a device whose budget would be zero.
    """
    table, name, kind = _fleet_header(path)
    if kind in RELATIVE_KINDS:
        if reference_peak_bytes is None:
            raise ConfigError(
                f"{path}: kind = {kind!r} budgets are fractions of the full-model peak; "
                "give the reference peak (reference_peak_bytes, or --reference-peak-mib)"
            )
        if isinstance(reference_peak_bytes, bool) or not isinstance(reference_peak_bytes, int) \
                or reference_peak_bytes <= 0:
            raise ConfigError(
                f"{path}: reference peak = {reference_peak_bytes!r}; "
                "use a positive whole number of bytes (the full-model peak)"
            )
        rows: list[Row] = [
            (reference_peak_bytes * ppm // PPM, None, tier)
            for ppm, tier in relative_ppm(table, kind)
        ]
        if min(budget for budget, _, _ in rows) <= 0:
            raise ConfigError(
                f"{path}: reference peak = {reference_peak_bytes} bytes gives a device a zero "
                "budget; use a larger reference peak"
            )
    elif kind == "uniform":
        rows = uniform_rows(table)
    elif kind == "mix":
        rows = mix_rows(table, profiles)
    else:
        rows = explicit_rows(table, profiles)
    devices = tuple(
        Device(device_id=i, budget_bytes=budget, profile=profile, tier=tier)
        for i, (budget, profile, tier) in enumerate(rows)
    )
    return Fleet(name, devices, kind)


def load_fleets(
    folder: Path,
    profiles: Mapping[str, DeviceProfile],
    *,
    reference_peak_bytes: int | None = None,
) -> dict[str, Fleet]:
    """Read every ``*.toml`` fleet in ``folder`` (see :func:`load_fleet`).

    Relative and tiers fleets need ``reference_peak_bytes`` like in :func:`load_fleet`.

    Returns:
        Fleets by name, in file-name order.
    """
    return {
        fleet.name: fleet
        for fleet in (
            load_fleet(p, profiles, reference_peak_bytes=reference_peak_bytes)
            for p in toml_files(folder, "fleet")
        )
    }
