"""The device profiles and fleets as tables (``profl devices``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from profl_core.devices import (
    MIB,
    DeviceProfile,
    fleet_needs_reference,
    load_fleet,
    load_fractions,
)
from profl_core.errors import ConfigError


def profiles_table(profiles: dict[str, DeviceProfile]) -> pd.DataFrame:
    """One row per profile: RAM, usable fraction, overhead, budget (MiB) and source."""
    return pd.DataFrame([
        {
            "profile": p.name,
            "kind": p.kind,
            "ram_mib": p.ram_bytes // MIB,
            "usable_fraction": p.usable_fraction,
            "overhead_mib": p.runtime_overhead_bytes // MIB,
            "budget_mib": p.budget_bytes / MIB,
            "shared_gpu": p.shared_gpu_memory,
            "source": p.source,
        }
        for p in profiles.values()
    ])


def fleets_table(
    folder: Path, profiles: dict[str, DeviceProfile], reference_peak_bytes: int | None
) -> pd.DataFrame:
    """One row per fleet file: kind, device count and min/median/max budget.

    Relative fleets are shown as fractions of the full-model peak unless a reference peak is given.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder; give the folder of fleet files (--fleets)")
    rows = []
    for path in sorted(folder.glob("*.toml")):
        if fleet_needs_reference(path) and reference_peak_bytes is None:
            values, unit = load_fractions(path), "x peak"
            kind = load_fleet(path, profiles, reference_peak_bytes=MIB).kind
        else:
            fleet = load_fleet(path, profiles, reference_peak_bytes=reference_peak_bytes)
            values, unit, kind = fleet.budgets_bytes() / MIB, "MiB", fleet.kind
        rows.append({
            "fleet": path.stem,
            "kind": kind,
            "devices": len(values),
            "min": float(np.min(values)),
            "median": float(np.median(values)),
            "max": float(np.max(values)),
            "unit": unit,
        })
    return pd.DataFrame(rows)
