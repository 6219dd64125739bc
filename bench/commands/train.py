"""``profl train``: one federated run (ProFL or a baseline) with results and a curve.

Methods are the registered ones (:data:`profl_core.methods.registry.METHODS`, ``--method``):
ProFL, full-model FedAvg (``fedavg`` = ``alllarge``), ``exclusivefl``, ``allsmall``,
``heterofl``, ``fedrolex``, ``depthfl``, ``inclusivefl`` and the single-device alternatives.
Each names its own memory-table cases.

Writes into ``--out`` (default ``results/runs/<machine>/<utc>_<sha>_train-<label>/``):
``rounds.jsonl`` (one record per round), ``checkpoint.pt`` (every ``--checkpoint-every`` rounds
and at the end), ``model.pt`` (the final model's weights), ``result.json`` and
``learning_curve.png`` and, for ProFL, ``effective_movement.png`` (made from ``rounds.jsonl``).
``--resume`` continues an interrupted run in the same ``--out`` and ends with the weights of an
uninterrupted one. The work itself is
:func:`bench.training.run_training`, which the suites' accuracy sections use too.

The flags are made from :class:`bench.run_settings.TrainingConfig`'s fields (``per_round`` ->
``--per-round``, ``feature_cache`` -> ``--feature-cache/--no-feature-cache``) and from the
method configs' own fields (``--em-window 10``, ``--shrink/--no-shrink``, ``--schedule fixed``),
which go into ``TrainingConfig.options``. A diverged run prints its reason and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from bench.backends import add_backend_arguments, backend_session
from bench.config_fields import FieldSpec, add_flag
from bench.paths import CHECKOUT, RESULTS_DIR
from bench.run_files import RUN_FILE, check_resume
from bench.run_settings import (
    TRAINING_FIELDS,
    TrainingConfig,
    all_option_specs,
    option_specs,
)
from bench.training import check_inputs, run_training
from profl_core.errors import ConfigError
from profl_core.files import check_writable_dir
from profl_core.fl import RoundFailedError, RoundRecord
from profl_core.methods.registry import METHODS
from profl_core.results import run_dir

NAME = "train"
HELP = "run federated training (profl or a baseline) on a fleet; write rounds, result, a curve"

__all__ = ["add_arguments", "config_from_args", "run"]


#: TrainingConfig fields with no flag of their own: ``backend`` comes from bench/backends.py,
#: ``options`` from the method-option flags.
NOT_FLAGS = ("backend", "options")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainingConfig field, one per method option, and the CLI-only flags."""
    for spec in TRAINING_FIELDS.values():
        if spec.name not in NOT_FLAGS:
            add_flag(parser, spec)
    group = parser.add_argument_group(
        "method options", "settings of one method's config (only the given ones are set; "
        "a flag the chosen --method does not take is an error)")
    for spec, owners in all_option_specs().values():
        add_flag(group, spec, help=_option_help(owners), suppress=True)
    parser.add_argument("--out", type=Path, help="run folder (default: results/runs/...)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_backend_arguments(parser)


def _option_help(owners: dict[str, FieldSpec]) -> str:
    """``help [methods, default X]``, once per distinct help and default among the methods."""
    groups: dict[tuple[str, str], list[str]] = {}
    for method, spec in owners.items():
        default = spec.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        groups.setdefault((spec.help, "" if default is None else shown), []).append(method)
    parts = []
    for (text, default), methods in groups.items():
        who = "every method" if len(methods) == len(METHODS) else ", ".join(methods)
        parts.append(f"{text} [{who}{f', default {default}' if default else ''}]")
    return "; ".join(parts)


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The run's settings from the command line (validated by :class:`TrainingConfig`).

    Raises:
        ConfigError: A method-option flag the chosen method does not take.
    """
    given = vars(args)
    options = {name: given[name] for name in all_option_specs() if name in given}
    takes = option_specs(args.method)
    for name in options:
        if name not in takes:
            owners = all_option_specs()[name][1]  # {method: spec}
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} is a {'/'.join(owners)} option, not {args.method}'s")
    values = {name: given[name] for name in TRAINING_FIELDS if name not in NOT_FLAGS}
    return TrainingConfig(**values, backend=getattr(args, "backend", "local"), options=options)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out: the folder of the run to continue")
    out = args.out or run_dir(RESULTS_DIR, f"train-{config.label}", repo=CHECKOUT)
    # Everything that can be checked without work is checked before it (DESIGN §6).
    check_writable_dir(out)
    check_inputs(config)
    if args.resume:
        check_resume(config, out, required=True)
    elif (out / "rounds.jsonl").exists() or (out / RUN_FILE).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume or a new --out")
    print(f"run folder: {out}")
    bars: list[tqdm] = []  # made at the first round, so bad input fails before any output

    def progress(record: RoundRecord) -> None:
        if not bars:
            bars.append(tqdm(total=config.rounds, desc=config.label, unit="round"))
        bar = bars[0]
        if bar.n == 0 and record.round > 1:
            bar.update(record.round - 1)
        acc = "-" if record.accuracy is None else f"{record.accuracy:.3f}"
        bar.set_postfix_str(
            f"{record.stage} step {record.step} ({record.submodel}) acc {acc} "
            f"clients {len(record.participants)}"
        )
        bar.update(1)
        if record.step_end:
            bar.write(f"round {record.round}: {record.stage} step {record.step} "
                      f"({record.submodel}) ended: {record.step_end}")

    try:
        with backend_session(args):
            result = run_training(config, out, resume=args.resume, progress=progress, log=print)
    except RoundFailedError as err:
        print(f"profl train: {err}", file=sys.stderr)
        return 1
    finally:
        for bar in bars:
            bar.close()
    if result.extra.get("status") == "diverged":
        print(f"profl train: {result.extra['diverged']['message']}", file=sys.stderr)
        return 1
    return 0
