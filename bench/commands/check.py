"""``profl check``: the memory gate (DESIGN §5); the work is :func:`bench.gate.run_gate`.

Measures a suite's memory section (``--suite``: a shipped name or a TOML path; default the
``memory-ci`` suite) and compares each case's tensor and heap peaks and per-block peaks with a
baseline file (``--baseline``; in a source checkout by default its committed
``results/baselines/memory-ci.json``) for this torch minor version. ``--update`` creates or
refreshes that version's entry (other versions' entries are kept). Exit codes: 0 when every
comparable case is within tolerance (cases whose definition changed are reported "not
comparable" and do not fail), 1 on a regression or a missing case, 2 on unusable input (a
broken file, a JSON file that is not a baseline, a baseline made from another suite), in every
``--format`` (text, json, junit, github; :mod:`bench.gate_output`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.gate import run_gate
from bench.gate_output import FORMATS
from bench.paths import CHECKOUT_BASELINE
from bench.suites import load_suite
from profl_core.errors import ConfigError

NAME = "check"
HELP = "compare per-case and per-block tensor and heap peaks with the baseline (the CI gate)"
#: The committed baseline of a source checkout; an installed package has none (--baseline).
DEFAULT_BASELINE: Path | None = CHECKOUT_BASELINE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="memory-ci",
                        help="suite whose memory section is gated: a shipped suite's name or "
                             "a .toml path (default: memory-ci)")
    parser.add_argument("--baseline", type=Path,
                        help="baseline JSON file (default in a source checkout: its committed "
                             "results/baselines/memory-ci.json; an installed profl needs it)")
    parser.add_argument("--update", action="store_true",
                        help="create the baseline file or rewrite this torch version's entry "
                             "with the current numbers and definitions")
    parser.add_argument("--format", default="text", choices=sorted(FORMATS),
                        help="report format: text (default: one line per case that is not a "
                             "pass, then the totals), json, junit (JUnit XML) or github "
                             "(workflow commands); the exit code is the same in every format")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="write the report to FILE (atomically) instead of stdout, which "
                             "then gets one line with the totals")
    parser.add_argument("--details", action="store_true",
                        help="text format: add the per-block table of the numbers that changed")
    parser.add_argument("--all", action="store_true",
                        help="text format: add the per-block table with every row")


def baseline_path(given: Path | None) -> Path:
    """``--baseline`` if given, else the checkout's committed baseline.

    Raises:
        ConfigError: Neither (an installed package has no default baseline).
    """
    if given is not None:
        return given
    if DEFAULT_BASELINE is None:
        raise ConfigError("no --baseline: an installed profl has no default baseline; give "
                          "--baseline PATH (`profl check --update --baseline PATH` creates it)")
    return DEFAULT_BASELINE


def run(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    return run_gate(suite, baseline_path(args.baseline), update=args.update,
                    show_all=args.all, details=args.details, fmt=args.format,
                    output=args.output, suite_arg=args.suite)
