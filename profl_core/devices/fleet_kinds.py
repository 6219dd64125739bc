"""The budget list of a fleet file, one rule per ``kind``.

Each builder reads the fields of its kind from the fleet's table and returns one row per
device, in fleet order:

* ``uniform``: integer budgets drawn uniformly from ``[low, high]`` (in ``budget_unit``) with
  ``random.Random(seed).randint``, exactly as the ProFL authors' ``distri_device()`` did.
* ``mix``: counts of named profiles.
* ``explicit``: a list of devices, each by profile name or by budget.
* ``relative`` and ``tiers`` (:func:`relative_ppm`): budgets as parts per million of the
  reference (full-model) peak; ``relative`` draws them uniformly in ``[low_fraction,
  high_fraction]`` with ``np.random.default_rng(seed)``, ``tiers`` gives equal groups one
  fraction each. :func:`profl_core.devices.fleets.load_fleet` scales them by the peak.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from fractions import Fraction

import numpy as np

from profl_core.devices.types import MB, MIB, DeviceProfile
from profl_core.devices.validation import MAX_DEVICES, Table
from profl_core.errors import ConfigError

BUDGET_UNITS: dict[str, int] = {"MiB": MIB, "MB": MB}
"""Units a fleet file may give budgets in, and their size in bytes."""
PPM = 10**6
"""Resolution of relative budget fractions: parts per million."""
MAX_FRACTION = 1000
"""Largest budget of a relative or tiers fleet, as a multiple of the full-model peak."""

Row = tuple[int, str | None, str | None]
"""One device of an absolute fleet: budget in bytes, profile name, tier name."""

_COMMON_KEYS = ("name", "kind", "description")
FLEET_KEYS: dict[str, tuple[str, ...]] = {
    "uniform": (*_COMMON_KEYS, "count", "budget_unit", "low", "high", "seed"),
    "mix": (*_COMMON_KEYS, "groups"),
    "relative": (*_COMMON_KEYS, "count", "low_fraction", "high_fraction", "seed"),
    "tiers": (*_COMMON_KEYS, "count", "tiers"),
    "explicit": (*_COMMON_KEYS, "budget_unit", "devices"),
}
"""The keys a fleet file of each kind may have."""


def _budget_unit(table: Table) -> int:
    return BUDGET_UNITS[table.string(
        "budget_unit", 'add budget_unit = "MiB"', choices=tuple(BUDGET_UNITS)
    )]


def _count(table: Table) -> int:
    return table.integer("count", f"use a whole number of devices from 1 to {MAX_DEVICES}",
                         minimum=1, maximum=MAX_DEVICES)


def _seed(table: Table) -> int:
    return table.integer("seed", "use a whole number >= 0, e.g. seed = 42", minimum=0,
                         maximum=2**63 - 1)


def uniform_rows(table: Table) -> list[Row]:
    """The devices of a ``uniform`` fleet: ``count`` seeded draws in ``[low, high]``."""
    count = _count(table)
    unit = _budget_unit(table)
    low = table.integer("low", "use a positive whole number (in budget_unit)", minimum=1)
    high = table.integer("high", "use a whole number >= low (in budget_unit)", minimum=low)
    draw = random.Random(_seed(table))  # a local instance: the authors' draw, not global state
    return [(draw.randint(low, high) * unit, None, None) for _ in range(count)]


def _profile_of(item: Table, profiles: Mapping[str, DeviceProfile]) -> DeviceProfile:
    name = item.string("profile", "give a profile name")
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none loaded"
        item.fail("profile", f"use a known profile ({known}) or add {name}.toml to the "
                  "profiles folder")
    return profiles[name]


def mix_rows(table: Table, profiles: Mapping[str, DeviceProfile]) -> list[Row]:
    """The devices of a ``mix`` fleet: each ``[[groups]]`` table's count of its profile."""
    rows: list[Row] = []
    for group in table.tables("groups", 'add [[groups]] tables with profile and count'):
        group.check_keys(("profile", "count"))
        profile = _profile_of(group, profiles)
        count = group.integer("count", f"use a whole number of devices from 1 to {MAX_DEVICES}",
                              minimum=1, maximum=MAX_DEVICES - len(rows))
        rows += [(profile.budget_bytes, profile.name, None)] * count
    return rows


def explicit_rows(table: Table, profiles: Mapping[str, DeviceProfile]) -> list[Row]:
    """The devices of an ``explicit`` fleet: ``[[devices]]`` tables, by profile or budget."""
    rows: list[Row] = []
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


def _ppm(table: Table, key: str, fix: str) -> int:
    value = table.number(key, fix)
    if value > MAX_FRACTION:
        table.fail(key, f"{fix} (at most {MAX_FRACTION})")
    ppm = math.floor(Fraction(repr(value)) * PPM)
    if ppm <= 0:
        table.fail(key, fix)
    return ppm


def relative_ppm(table: Table, kind: str) -> list[tuple[int, str | None]]:
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
