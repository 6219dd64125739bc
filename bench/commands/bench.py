"""``profl bench [SUITE]``: run a suite into ``results/runs/`` and print its tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.backends import add_backend_arguments, backend_session
from bench.runner import check_run_folder, latest_run, new_run_folder, run_suite
from bench.suites import load_suite, suite_names

NAME = "bench"
HELP = ("run a suite (default: memory and accuracy sections; smoke, fmnist-full, paper-cifar10, "
        "speed, memory-ci) into results/runs/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", nargs="?", default="default",
                        help=f"suite name ({', '.join(suite_names())}) or a .toml path")
    parser.add_argument("--out", type=Path, help="run folder (default: a new one in results/runs)")
    parser.add_argument("--data-dir", type=Path, help="folder holding the dataset")
    parser.add_argument("--devices", type=Path,
                        help="devices folder (profiles/*.toml, fleets/*.toml) used instead of "
                             "the shipped one")
    parser.add_argument("--resume", action="store_true",
                        help="continue --out (or this suite's newest run) without redoing cases")
    add_backend_arguments(parser)


def run(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    if args.resume:
        folder = args.out or latest_run(suite.name)
    else:
        folder = args.out or new_run_folder(suite.name)
    check_run_folder(folder, resume=args.resume)
    with backend_session(args):
        for line in run_suite(suite, folder, resume=args.resume, data_dir=args.data_dir,
                              backend=args.backend, devices=args.devices):
            print(line)
    print(f"\nwrote {folder}/report.md, result.json, tables/ and figures/")
    return 0
