"""``profl gpu-check``: every GPU check of the memory probes; the work is
:func:`bench.gpu_check.check_on_gpu` (the checks are described there).

Checks the memory probes on a CUDA device: dispatch vs the allocator's peak (a), per block (b),
reserved bytes (c), predict with the foreach optimizer vs dispatch (d). Prints a table, writes
JSON; exit 0 ok, 1 a check failed, 2 bad arguments or no CUDA device (one line, nothing
written). ``make gpu-check`` runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.gpu_check import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUDGET_S,
    DEFAULT_MODELS,
    DEFAULT_OUT,
    EXTRA_CASES,
    check_on_gpu,
    default_cases,
    parse_case_spec,
    resolve_device,
)
from bench.gpu_check_probes import Tolerances
from profl_core.errors import ConfigError

NAME = "gpu-check"
HELP = ("check the memory probes against the CUDA allocator on a GPU (exit 2 without one); "
        "prints a table, writes JSON")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; write e.g. 0.01") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1); write e.g. 0.01")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; use 1 or more")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g}; use more than 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--case", action="append", default=None, metavar="MODEL:CASE",
        help="a case to check, e.g. resnet18:grow:2 (repeat it; default: "
             f"{', '.join(DEFAULT_MODELS)} full, every grow:t and shrink:2, then "
             f"{', '.join(EXTRA_CASES)})",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file to write")
    parser.add_argument("--tolerance", type=_fraction, default=Tolerances.allocated,
                        help="(a) allocator peak vs dispatch peak, relative")
    parser.add_argument("--block-tolerance", type=_fraction, default=Tolerances.blocks,
                        help="(b) per-(block, phase) peaks, relative")
    parser.add_argument("--predict-tolerance", type=_fraction, default=Tolerances.predict,
                        help="(d) predict (foreach) vs dispatch on CUDA, relative")
    parser.add_argument("--budget-s", type=_positive_float, default=DEFAULT_BUDGET_S,
                        help="start no case after this many seconds (the rest are skipped)")


def run(args: argparse.Namespace) -> int:
    if args.out.is_dir():
        raise ConfigError(f"--out {str(args.out)!r} is a folder; give a file path")
    device = resolve_device(args.device)
    cases = ([parse_case_spec(spec, batch_size=args.batch_size) for spec in args.case]
             if args.case else default_cases(args.batch_size))
    tol = Tolerances(allocated=args.tolerance, blocks=args.block_tolerance,
                     predict=args.predict_tolerance)
    return check_on_gpu(cases, device=device, out=args.out, batch_size=args.batch_size,
                        tol=tol, budget_s=args.budget_s)
