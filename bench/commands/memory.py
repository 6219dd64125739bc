"""``profl memory``: the memory section for chosen models, batch size and probe."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.memory_cases import MemorySection
from bench.model_options import MODEL_HELP, add_spec_arguments, spec_overrides
from bench.runner import check_run_folder, latest_run, new_run_folder, run_suite
from bench.suites import Suite
from profl_core.errors import ConfigError
from profl_core.memory import PROBES
from profl_core.models import MODEL_NAMES, check_model_name

NAME = "memory"
HELP = "per-case and per-block training memory of every ProFL step, and participation per fleet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append",
                        help=f"{MODEL_HELP} (repeatable; default: the zoo)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--probe", default="predict", help=f"one of {', '.join(PROBES)}")
    parser.add_argument("--num-classes", type=int, default=10)
    add_spec_arguments(parser, num_classes=False)
    parser.add_argument("--devices", type=Path,
                        help="devices folder (profiles/*.toml, fleets/*.toml) whose fleets give "
                             "the participation, instead of the shipped one")
    parser.add_argument("--out", type=Path,
                        help="run folder (default: a new one in ./results/runs)")
    parser.add_argument("--resume", action="store_true",
                        help="continue --out without redoing cases")


def run(args: argparse.Namespace) -> int:
    models = tuple(args.model or MODEL_NAMES)
    for name in models:
        check_model_name(name)
    if args.probe not in PROBES:
        raise ConfigError(f"--probe {args.probe!r}; use one of {', '.join(PROBES)}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}; use a positive integer")
    overrides = spec_overrides(args)
    if "blocks" in overrides and len(models) != 1:
        raise ConfigError(f"--blocks applies to one model; give one --model, not {len(models)}")
    section = MemorySection(models=models, batch_size=args.batch_size, probe=args.probe,
                            num_classes=args.num_classes,
                            model_spec=dict.fromkeys(models, overrides) if overrides else {})
    suite = Suite(name="memory", path=Path("-"), zoo_models=(), memory=section)
    folder = args.out or (latest_run("memory") if args.resume else new_run_folder("memory"))
    check_run_folder(folder, resume=args.resume)
    for line in run_suite(suite, folder, resume=args.resume, devices=args.devices):
        print(line)
    print(f"\nwrote {folder}/result.json, tables/ and figures/")
    return 0
