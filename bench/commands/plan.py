"""``profl plan``: choose ProFL's block boundaries to shrink its largest step (issue 14)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.model_options import MODEL_HELP, add_spec_arguments, spec_overrides
from bench.paths import report_cache_dir
from bench.planning import PLAN_THREADS, make_plan, plan_fleet, plan_record, render_plan
from bench.report_cache import ReportCache
from profl_core.errors import ConfigError
from profl_core.memory import PROBES
from profl_core.memory.plan import OBJECTIVES
from profl_core.models import native_spec
from profl_core.results import atomic_write_text

NAME = "plan"
HELP = "plan ProFL's partition at layer granularity: the smallest largest-step peak"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    add_spec_arguments(parser)
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-blocks", type=int, default=8,
                        help="most blocks (ProFL runs 2 * blocks - 1 steps); default 8")
    parser.add_argument("--probe", default="predict", choices=PROBES[:3],
                        help="what measures each candidate step (default predict; heap and "
                             "dispatch run real steps)")
    parser.add_argument("--objective", default="required", choices=OBJECTIVES,
                        help="the peak to minimise: required (what selection compares with a "
                             "budget; default) or tensor (live tensors only)")
    parser.add_argument("--fleet", help="fleet name or .toml path: print each step's share of "
                                        "devices that fit it")
    parser.add_argument("--devices", type=Path, help="devices folder for --fleet")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--out", type=Path,
                        help="write the plan file (for profl train --partition-plan)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache", type=Path, metavar="DIR",
                       help="keep every measured step's report in DIR and reuse it in later "
                            "plans on this machine and code (default "
                            "$XDG_CACHE_HOME/profl/reports, else ~/.cache/profl/reports)")
    cache.add_argument("--no-cache", action="store_true",
                       help="measure every step, read and write no cache")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: use 1 or more")
    spec = native_spec(args.model, width=args.width, **spec_overrides(args))
    cache = None if args.no_cache else ReportCache(
        args.cache or report_cache_dir(), probe=args.probe, threads=PLAN_THREADS,
        warnings=sys.stderr)
    planned, stage = make_plan(spec, batch_size=args.batch_size, max_blocks=args.max_blocks,
                               probe=args.probe, objective=args.objective, cache=cache)
    if cache is not None:
        print(f"report cache {cache.directory}: {cache.hits} steps reused, {cache.misses} "
              "measured", file=sys.stderr)
    fleet = (None if args.fleet is None
             else plan_fleet(args.fleet, planned.full_required_bytes, args.devices))
    record = plan_record(planned, stage, batch_size=args.batch_size, probe=args.probe,
                         max_blocks=args.max_blocks, objective=args.objective, fleet=fleet)
    text = json.dumps(record, indent=1, sort_keys=True)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else render_plan(record))
    if args.out is not None and not args.json:
        print(f"wrote {args.out}")
    return 0
