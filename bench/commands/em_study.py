"""``profl em-study``: run ProFL's steps well past their end on a suite's accuracy setting and
compare EM freeze rules with the plateau oracle (:mod:`bench.em_study`, docs/training.md
"Effective movement")."""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from bench.em_study import AUTHORS_RULE, TRAJECTORIES, run_study, study_config, write_report
from bench.paths import RESULTS_DIR
from bench.run_settings import method_config
from bench.suites import load_suite
from profl_core.errors import ConfigError
from profl_core.methods.registry import load_plugins

NAME = "em-study"
HELP = "run ProFL's steps past their end; compare EM freeze rules with the plateau oracle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="default",
                        help="suite whose accuracy setting and ProFL rule are studied "
                             "(default: default)")
    parser.add_argument("--partitions", nargs="+", default=None,
                        help="partitions (default: the suite's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds (default: the suite's)")
    parser.add_argument("--step-rounds", type=int, default=60,
                        help="rounds every step is run for (default: 60)")
    parser.add_argument("--workers", type=int, default=2,
                        help="runs at once, one torch thread each (default: 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder (default: results/em-study/<suite>); finished runs in it "
                             "are kept, unfinished ones start over")


def _one(config: Any, out: Path) -> Path:
    """Run one study in a worker process (one torch thread)."""
    load_plugins()
    torch.set_num_threads(1)
    return run_study(config, out)


def run(args: argparse.Namespace) -> int:
    if args.step_rounds < 4:
        raise ConfigError(f"--step-rounds {args.step_rounds}; use at least 4 (the oracle needs "
                          "a plateau to find)")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}; use 1 or more")
    section = load_suite(args.suite).accuracy
    if section is None:
        raise ConfigError(f"--suite {args.suite}: it has no [accuracy] section to study")
    folder = args.out or RESULTS_DIR / "em-study" / args.suite
    partitions = args.partitions or list(section.partitions)
    seeds = args.seeds if args.seeds is not None else list(section.seeds)
    jobs = []
    for part in partitions:
        for seed in seeds:
            out = folder / f"{part.replace(':', '')}-s{seed}"
            if not (out / TRAJECTORIES).is_file():
                base = section.config("profl", part, seed)
                jobs.append((study_config(base, args.step_rounds), out))
    start = time.perf_counter()
    print(f"{len(jobs)} study runs to do in {folder} ({args.step_rounds} rounds a step)",
          flush=True)
    def finished(done: int, out: Path) -> None:
        print(f"[{done}/{len(jobs)}] {out.name} done ({time.perf_counter() - start:.0f} s)",
              flush=True)

    if args.workers == 1:  # in this process
        for done, (config, out) in enumerate(jobs, 1):
            run_study(config, out)
            finished(done, out)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
            futures = {pool.submit(_one, config, out): out for config, out in jobs}
            for done, future in enumerate(as_completed(futures), 1):
                finished(done, future.result())
    rule = method_config(section.config("profl", partitions[0], seeds[0])).freeze_rule()
    print(write_report(folder, {"profl": rule, "authors": AUTHORS_RULE}, "profl"))
    print(f"\nwrote {folder / 'em_study.md'}, {folder / 'steps.csv'}, {folder / 'figures'}/")
    return 0
