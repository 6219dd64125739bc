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
    made = [name + "/" for name in ("tables", "figures") if (args.run_dir / name).is_dir()]
    print(f"\nwrote {', '.join([str(args.run_dir / 'report.md'), *made])}")
    return 0
