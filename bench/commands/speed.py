"""``profl speed``: the pytest-benchmark speed suite and the target ratios it measures."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.runner import new_run_folder
from bench.speed import run_speed

NAME = "speed"
HELP = "run the speed benchmarks (pytest-benchmark) and report the target ratios"
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="run folder (default: a new one in results/runs)")
    parser.add_argument("-k", dest="select", help="pytest -k expression to run a subset")


def run(args: argparse.Namespace) -> int:
    folder = args.out or new_run_folder("speed")
    print(run_speed(folder, args.select))
    print(f"\nwrote {folder / 'benchmark.json'} and {folder / 'speed.md'}")
    return 0
