"""``profl devices``: the device profiles and fleets, as tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from bench.device_tables import fleets_table, profiles_table
from bench.paths import DEVICES_DIR, fleets_dir, profiles_dir
from profl_core.devices import MIB, load_profiles
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
