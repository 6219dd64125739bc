"""``profl devices``: the device profiles and fleets, as tables."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench.paths import DEVICES_DIR, fleets_dir, profiles_dir
from profl_core.devices import (
    MIB,
    DeviceProfile,
    fleet_needs_reference,
    load_fleet,
    load_fractions,
    load_profiles,
)
from profl_core.errors import ConfigError

NAME = "devices"
HELP = "print the device profiles (RAM, usable share, budget) and the fleets' budget spread"



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=Path,
                        help="devices folder holding profiles/*.toml and fleets/*.toml "
                             f"(default: the shipped one, {DEVICES_DIR})")
    parser.add_argument("--profiles", type=Path,
                        help="folder of profile files (default: the devices folder's profiles/)")
    parser.add_argument("--fleets", type=Path,
                        help="folder of fleet files (default: the devices folder's fleets/)")
    parser.add_argument("--reference-peak-mib", type=float,
                        help="full-model peak in MiB; relative fleets then show MiB budgets")


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


def run(args: argparse.Namespace) -> int:
    peak_bytes = None
    if args.reference_peak_mib is not None:
        if not args.reference_peak_mib > 0:
            raise ConfigError(
                f"--reference-peak-mib = {args.reference_peak_mib}; use a positive number of MiB"
            )
        peak_bytes = round(args.reference_peak_mib * MIB)
    profile_folder = args.profiles or profiles_dir(args.devices)
    profiles = load_profiles(profile_folder)
    fleets = fleets_table(args.fleets or fleets_dir(args.devices), profiles, peak_bytes)
    print(f"Device profiles in {profile_folder} (budget = ram * usable_fraction - overhead)\n")
    print(tabulate(profiles_table(profiles), headers="keys", tablefmt="github",
                   showindex=False, floatfmt=".2f"))
    print(f"\nFleets in {args.fleets or fleets_dir(args.devices)}\n")
    print(tabulate(fleets, headers="keys", tablefmt="github", showindex=False, floatfmt=".2f"))
    return 0
