"""``profl compare RUN_A RUN_B``: the same metrics of two run folders side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.run_comparison import compare_runs

NAME = "compare"
HELP = "compare two run folders: accuracy, memory and time metrics with deltas (b - a)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", type=Path, help="the reference run folder")
    parser.add_argument("run_b", type=Path, help="the run folder to compare with it")


def run(args: argparse.Namespace) -> int:
    print(compare_runs(args.run_a, args.run_b))
    return 0
