"""``profl report RUN_DIR``: rebuild a run folder's report, tables and figures from its files."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import build_report

NAME = "report"
HELP = "rebuild report.md, tables/ and figures/ of a run folder from its files only"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run folder (results/runs/<machine>/...)")


def run(args: argparse.Namespace) -> int:
    print(build_report(args.run_dir))
    print(f"\nwrote {args.run_dir / 'report.md'}, tables/ and figures/")
    return 0
