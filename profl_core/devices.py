"""Device profiles and fleets: who can train what.

A *profile* (``devices/profiles/<name>.toml``) describes one kind of device: total RAM, the share
of it a training process may use, and the runtime overhead to subtract. Its training budget is::

    budget_bytes = floor(ram_bytes * usable_fraction) - runtime_overhead_bytes

A *fleet* (``devices/fleets/<name>.toml``) is a list of devices, each with a ``budget_bytes``. Its
``kind`` says how the list is built:

* ``uniform``: integer budgets drawn uniformly from ``[low, high]`` (in ``budget_unit``) with
  ``random.Random(seed).randint``, exactly as the ProFL authors' ``distri_device()`` did.
* ``mix``: counts of named profiles.
* ``relative``: budgets uniform in ``[low_fraction, high_fraction]`` times the run's full-model
  peak (the *reference peak*, given at load time). Fractions are drawn in parts per million with
  ``np.random.default_rng(seed)``, so budgets scale exactly with the peak.
* ``tiers``: equal groups, each with a budget that is a fraction of the reference peak.
* ``explicit``: a list of devices, each by profile name or by budget.

Files say their unit (``ram_mib``, ``budget_unit = "MiB"``); the loader converts to integer bytes
once. Every bad field raises :class:`~profl_core.errors.ConfigError` with one line naming the file,
the field and the fix.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from profl_core.errors import ConfigError
from profl_core.files import Fields, read_toml

MIB = 2**20
"""Bytes in one MiB."""
MB = 10**6
"""Bytes in one MB (SI)."""
BUDGET_UNITS: dict[str, int] = {"MiB": MIB, "MB": MB}
"""Units a fleet file may give budgets in, and their size in bytes."""
PROFILE_KINDS = ("phone", "board", "jetson")
"""Allowed values of a profile's ``kind``."""
FLEET_KINDS = ("uniform", "mix", "relative", "tiers", "explicit")
"""Allowed values of a fleet's ``kind``."""
RELATIVE_KINDS = ("relative", "tiers")
"""Fleet kinds whose budgets are fractions of the reference (full-model) peak."""
PPM = 10**6
"""Resolution of relative budget fractions: parts per million."""
MAX_FRACTION = 1000
"""Largest budget of a relative or tiers fleet, as a multiple of the full-model peak."""


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    """One kind of device, as read from a profile file.

    Attributes:
        name: Profile name (equal to the file's stem), e.g. ``"phone-4gb"``.
        kind: ``"phone"``, ``"board"`` or ``"jetson"``.
        ram_bytes: Total RAM in bytes.
        usable_fraction: Share of RAM a training process may use, in (0, 1]. An assumption.
        runtime_overhead_bytes: Runtime/framework overhead subtracted from the usable RAM.
        shared_gpu_memory: True when the GPU uses the same DRAM as the CPU (Jetson).
        source: One line saying where the RAM figure comes from.
    """

    name: str
    kind: str
    ram_bytes: int
    usable_fraction: float
    runtime_overhead_bytes: int
    shared_gpu_memory: bool
    source: str

    @property
    def budget_bytes(self) -> int:
        """Training budget: ``floor(ram_bytes * usable_fraction) - runtime_overhead_bytes``.

        The fraction is taken as the decimal number written in the file, so the result matches a
        hand computation exactly.
        """
        usable = math.floor(Fraction(repr(self.usable_fraction)) * self.ram_bytes)
        return usable - self.runtime_overhead_bytes


@dataclass(frozen=True, kw_only=True)
class Device:
    """One client device of a fleet.

    Attributes:
        device_id: Index of the device in its fleet, 0-based.
        budget_bytes: Memory the device can give to one training step, in bytes.
        profile: Name of the profile the device was built from, if any.
        tier: Name of the device's tier (``tiers`` fleets), if any.
    """

    device_id: int
    budget_bytes: int
    profile: str | None = None
    tier: str | None = None


@dataclass(frozen=True)
class Fleet:
    """A named, ordered list of devices.

    Attributes:
        name: Fleet name (the file's stem).
        devices: The devices, ``devices[i].device_id == i``.
        kind: How the fleet was built (one of :data:`FLEET_KINDS`).
    """

    name: str
    devices: tuple[Device, ...]
    kind: str = "explicit"

    def eligible(self, required_bytes: int) -> tuple[Device, ...]:
        """Devices whose budget covers ``required_bytes`` (``budget_bytes >= required_bytes``).

        Args:
            required_bytes: Peak memory of the training case, in bytes.

        Returns:
            The eligible devices, in fleet order.
        """
        return tuple(d for d in self.devices if d.budget_bytes >= required_bytes)

    def participation(self, required_bytes: int) -> float:
        """Share of the fleet that is eligible for ``required_bytes`` (0.0 for an empty fleet)."""
        if not self.devices:
            return 0.0
        return len(self.eligible(required_bytes)) / len(self.devices)

    def spread(self, count: int) -> Fleet:
        """``count`` devices at evenly spaced positions, renumbered ``0 .. count-1``.

        Position ``floor(i * len(devices) / count)`` for i = 0 .. count-1, so a fleet listed in
        groups (``tiers``, ``mix``) keeps its group shares and a random fleet stays random.

        Raises:
            ConfigError: ``count`` is not in ``1 .. len(devices)``.
        """
        total = len(self.devices)
        if not 1 <= count <= total:
            raise ConfigError(
                f"clients={count}: fleet {self.name!r} has {total} devices; use 1 to {total}"
            )
        picked = [self.devices[i * total // count] for i in range(count)]
        devices = tuple(replace(d, device_id=i) for i, d in enumerate(picked))
        return Fleet(self.name, devices, self.kind)

    def budgets_bytes(self) -> np.ndarray:
        """The devices' budgets in bytes, as an ``int64`` array in fleet order."""
        return np.array([d.budget_bytes for d in self.devices], dtype=np.int64)


# --------------------------------------------------------------------------- validation helpers

#: Most devices a fleet file may describe (any count, sum of counts): a larger number is a
#: typo, and would only exhaust memory.
MAX_DEVICES = 1_000_000
#: Largest memory a profile or budget may give, in MiB (1 PiB).
MAX_MIB = 2**30


class _Table(Fields):
    """A TOML table being validated (:class:`profl_core.files.Fields` with the TOML word)."""

    def __init__(self, data: Any, file: Path, where: str = "") -> None:
        super().__init__(data, file, where, table="table")

    def fail(self, key: str, fix: str) -> NoReturn:
        """Raise a one-line ConfigError for ``key``'s current value."""
        self.bad(key, fix)

    def integer(self, key: str, fix: str = "use a whole number", *, minimum: int | None = None,
                maximum: int | None = MAX_MIB) -> int:
        """A required integer ``>= minimum`` (booleans are rejected; at most ``maximum``)."""
        return super().integer(key, fix, minimum=minimum, maximum=maximum)

    def number(self, key: str, fix: str = "use a number", **_: Any) -> float:  # type: ignore[override]
        """A required finite number ``> 0``."""
        return super().number(key, fix, positive=True)

    def tables(self, key: str, fix: str) -> list[_Table]:  # type: ignore[override]
        """A required non-empty array of tables."""
        value = self.items(key, fix, nonempty=True)
        return [_Table(item, Path(self.file), f"{self.name(key)}[{i}]")
                for i, item in enumerate(value)]


def _read_toml(path: Path) -> dict[str, Any]:
    return read_toml(path, "TOML file", missing="check the path")


def _toml_files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder; give the folder of {what} files")
    return sorted(folder.glob("*.toml"))


def _check_name(table: _Table, path: Path) -> str:
    name = table.string("name", f'add name = "{path.stem}"')
    if name != path.stem:
        table.fail("name", f'use name = "{path.stem}" (the file name) or rename the file')
    return name


# --------------------------------------------------------------------------------- profiles

_PROFILE_KEYS = (
    "name", "kind", "ram_mib", "usable_fraction", "runtime_overhead_mib", "shared_gpu_memory",
    "source",
)


def load_profile(path: Path) -> DeviceProfile:
    """Read and validate one profile file.

    Args:
        path: A ``devices/profiles/<name>.toml`` file.

    Returns:
        The profile; its budget is positive.

    Raises:
        ConfigError: On any missing, unknown or invalid field, or a budget that is not positive.
    """
    table = _Table(_read_toml(path), path)
    table.check_keys(_PROFILE_KEYS)
    name = _check_name(table, path)
    kind = table.string("kind", 'add kind = "phone"', choices=PROFILE_KINDS)
    ram_mib = table.integer("ram_mib", "use a positive whole number of MiB", minimum=1)
    fraction = table.number("usable_fraction", "use a number in (0, 1], e.g. 0.4")
    if fraction > 1:
        table.fail("usable_fraction", "use a number in (0, 1], e.g. 0.4")
    overhead_mib = table.integer(
        "runtime_overhead_mib", "use a whole number of MiB >= 0", minimum=0
    )
    shared = table.boolean("shared_gpu_memory", "use true or false")
    source = table.string("source", 'add source = "<where the RAM figure comes from>"')
    if "\n" in source:
        table.fail("source", "keep the source on one line")
    profile = DeviceProfile(
        name=name,
        kind=kind,
        ram_bytes=ram_mib * MIB,
        usable_fraction=fraction,
        runtime_overhead_bytes=overhead_mib * MIB,
        shared_gpu_memory=shared,
        source=source,
    )
    if profile.budget_bytes <= 0:
        table.fail(
            "runtime_overhead_mib",
            f"the budget ram_mib * usable_fraction - runtime_overhead_mib is "
            f"{profile.budget_bytes / MIB:.1f} MiB; lower the overhead or raise usable_fraction",
        )
    return profile


def load_profiles(folder: Path) -> dict[str, DeviceProfile]:
    """Read every ``*.toml`` profile in ``folder``.

    Args:
        folder: The profiles folder, e.g. ``devices/profiles``.

    Returns:
        Profiles by name, in file-name order.

    Raises:
        ConfigError: If the folder does not exist or any file is invalid.
    """
    return {p.name: p for p in map(load_profile, _toml_files(folder, "profile"))}


# ----------------------------------------------------------------------------------- fleets

_COMMON_KEYS = ("name", "kind", "description")
_FLEET_KEYS: dict[str, tuple[str, ...]] = {
    "uniform": (*_COMMON_KEYS, "count", "budget_unit", "low", "high", "seed"),
    "mix": (*_COMMON_KEYS, "groups"),
    "relative": (*_COMMON_KEYS, "count", "low_fraction", "high_fraction", "seed"),
    "tiers": (*_COMMON_KEYS, "count", "tiers"),
    "explicit": (*_COMMON_KEYS, "budget_unit", "devices"),
}


def _fleet_header(path: Path) -> tuple[_Table, str, str]:
    table = _Table(_read_toml(path), path)
    kind = table.string("kind", 'add kind = "uniform"', choices=FLEET_KINDS)
    table.check_keys(_FLEET_KEYS[kind])
    name = _check_name(table, path)
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
    table = _Table(_read_toml(path), path)
    return table.string("kind", 'add kind = "uniform"', choices=FLEET_KINDS) in RELATIVE_KINDS


def _budget_unit(table: _Table) -> int:
    return BUDGET_UNITS[table.string(
        "budget_unit", 'add budget_unit = "MiB"', choices=tuple(BUDGET_UNITS)
    )]


def _count(table: _Table) -> int:
    return table.integer("count", f"use a whole number of devices from 1 to {MAX_DEVICES}",
                         minimum=1, maximum=MAX_DEVICES)


def _seed(table: _Table) -> int:
    return table.integer("seed", "use a whole number >= 0, e.g. seed = 42", minimum=0,
                         maximum=2**63 - 1)


def _uniform(table: _Table) -> list[tuple[int, str | None, str | None]]:
    count = _count(table)
    unit = _budget_unit(table)
    low = table.integer("low", "use a positive whole number (in budget_unit)", minimum=1)
    high = table.integer("high", "use a whole number >= low (in budget_unit)", minimum=low)
    draw = random.Random(_seed(table))  # a local instance: the authors' draw, not global state
    return [(draw.randint(low, high) * unit, None, None) for _ in range(count)]


def _profile_of(item: _Table, profiles: Mapping[str, DeviceProfile]) -> DeviceProfile:
    name = item.string("profile", "give a profile name")
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none loaded"
        item.fail("profile", f"use a known profile ({known}) or add {name}.toml to the "
                  "profiles folder")
    return profiles[name]


def _mix(
    table: _Table, profiles: Mapping[str, DeviceProfile]
) -> list[tuple[int, str | None, str | None]]:
    rows: list[tuple[int, str | None, str | None]] = []
    for group in table.tables("groups", 'add [[groups]] tables with profile and count'):
        group.check_keys(("profile", "count"))
        profile = _profile_of(group, profiles)
        count = group.integer("count", f"use a whole number of devices from 1 to {MAX_DEVICES}",
                              minimum=1, maximum=MAX_DEVICES - len(rows))
        rows += [(profile.budget_bytes, profile.name, None)] * count
    return rows


def _explicit(
    table: _Table, profiles: Mapping[str, DeviceProfile]
) -> list[tuple[int, str | None, str | None]]:
    rows: list[tuple[int, str | None, str | None]] = []
    for item in table.tables("devices", "add [[devices]] tables, each with profile or budget"):
        item.check_keys(("profile", "budget", "count"))
        count = 1
        if "count" in item.data:
            count = item.integer("count",
                                 f"use a whole number of devices from 1 to {MAX_DEVICES}",
                                 minimum=1, maximum=MAX_DEVICES - len(rows))
        if ("profile" in item.data) == ("budget" in item.data):
            raise ConfigError(
                f"{table.file}: {item.where} needs exactly one of profile or budget; give one"
            )
        if "profile" in item.data:
            profile = _profile_of(item, profiles)
            rows += [(profile.budget_bytes, profile.name, None)] * count
        else:
            unit = _budget_unit(table)
            budget = item.integer("budget", "use a positive whole number (in budget_unit)",
                                  minimum=1)
            rows += [(budget * unit, None, None)] * count
    return rows


def _ppm(table: _Table, key: str, fix: str) -> int:
    value = table.number(key, fix)
    if value > MAX_FRACTION:
        table.fail(key, f"{fix} (at most {MAX_FRACTION})")
    ppm = math.floor(Fraction(repr(value)) * PPM)
    if ppm <= 0:
        table.fail(key, fix)
    return ppm


def _relative_ppm(table: _Table, kind: str) -> list[tuple[int, str | None]]:
    """Per device: the budget as parts per million of the reference peak, and the tier."""
    count = _count(table)
    if kind == "relative":
        fix = "use a fraction of the full-model peak > 0, e.g. 0.12"
        low = _ppm(table, "low_fraction", fix)
        high = _ppm(table, "high_fraction", "use a fraction >= low_fraction, e.g. 1.07")
        if high < low:
            table.fail("high_fraction", "use a fraction >= low_fraction, e.g. 1.07")
        rng = np.random.default_rng(_seed(table))
        draws = rng.integers(low, high, size=count, endpoint=True)
        return [(int(v), None) for v in draws]
    tiers = table.tables("tiers", "add [[tiers]] tables with name and fraction")
    if count % len(tiers):
        table.fail("count", f"use a multiple of the number of tiers ({len(tiers)})")
    rows: list[tuple[int, str | None]] = []
    names: set[str] = set()
    for tier in tiers:
        tier.check_keys(("name", "fraction"))
        name = tier.string("name", 'add name = "tier-1"')
        if name in names:
            tier.fail("name", "use a tier name that is not already taken")
        names.add(name)
        ppm = _ppm(tier, "fraction", "use a fraction of the full-model peak > 0, e.g. 0.25")
        rows += [(ppm, name)] * (count // len(tiers))
    return rows


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
    return np.array([ppm for ppm, _ in _relative_ppm(table, kind)], dtype=np.float64) / PPM


def load_fleet(
    path: Path,
    profiles: Mapping[str, DeviceProfile],
    *,
    reference_peak_bytes: int | None = None,
) -> Fleet:
    """Read, validate and build one fleet.

    Args:
        path: A ``devices/fleets/<name>.toml`` file.
        profiles: Known profiles by name (see :func:`load_profiles`).
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
        rows = [
            (reference_peak_bytes * ppm // PPM, None, tier)
            for ppm, tier in _relative_ppm(table, kind)
        ]
        if min(budget for budget, _, _ in rows) <= 0:
            raise ConfigError(
                f"{path}: reference peak = {reference_peak_bytes} bytes gives a device a zero "
                "budget; use a larger reference peak"
            )
    elif kind == "uniform":
        rows = _uniform(table)
    elif kind == "mix":
        rows = _mix(table, profiles)
    else:
        rows = _explicit(table, profiles)
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
            for p in _toml_files(folder, "fleet")
        )
    }
