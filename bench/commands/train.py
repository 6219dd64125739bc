"""``profl train``: one federated run (ProFL or a baseline) with results and a curve.

Methods come from :data:`bench.training.METHODS` (``--method``): ProFL, full-model FedAvg with
its three policies (``fedavg`` = ``alllarge``, ``exclusivefl``, ``allsmall``), ``heterofl``,
``fedrolex``, ``depthfl`` and ``inclusivefl``. Each baseline names its own memory-table cases.

Writes into ``--out`` (default ``results/runs/<machine>/<utc>_<sha>_train-<method>/``):
``rounds.jsonl`` (one record per round), ``checkpoint.pt`` (every ``--checkpoint-every`` rounds
and at the end), ``model.pt`` (the final model's weights), ``result.json`` and
``learning_curve.png`` (made from ``rounds.jsonl``). ``--resume`` continues an interrupted run
in the same ``--out`` and ends with the weights of an uninterrupted one. The work itself is
:func:`bench.training.run_training`, which the suites' accuracy sections use too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from bench.backends import add_backend_arguments, backend_session
from bench.training import METHODS, REPO, TrainingConfig, run_training
from profl_core.data import DATASET_NAMES
from profl_core.errors import ConfigError
from profl_core.fl import RoundFailedError, RoundRecord
from profl_core.models import MODEL_NAMES
from profl_core.results import run_dir

NAME = "train"
HELP = "run federated training (profl or a baseline) on a fleet; write rounds, result, a curve"

__all__ = ["METHODS", "add_arguments", "config_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=tuple(METHODS), default="profl")
    parser.add_argument("--model", default="cnn", help=f"one of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--width", type=float, default=1.0, help="model width multiplier")
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path, help="folder holding the dataset")
    parser.add_argument("--fleet", default="relative-uniform",
                        help="fleet name in devices/fleets or a path to a fleet TOML")
    parser.add_argument("--clients", type=int, default=100,
                        help="number of clients (N devices spread evenly over the fleet)")
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=100, help="total round budget")
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--distill-lr", type=float, default=0.01,
                        help="ProFL basic-layer fit lr (the authors used 1e-5)")
    parser.add_argument("--partition", default="dirichlet:0.5",
                        help="iid, dirichlet:ALPHA or shards:K")
    parser.add_argument("--samples-per-client", type=int, default=0,
                        help="keep at most this many random samples per client (0: all)")
    parser.add_argument("--test-samples", type=int, default=0,
                        help="evaluate on the first N test samples (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", choices=("em", "fixed"), default="em")
    parser.add_argument("--no-shrink", action="store_true", help="ProFL without shrinking")
    parser.add_argument("--frozen-bn", choices=("eval", "train"), default="eval")
    parser.add_argument("--no-feature-cache", action="store_true")
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    parser.add_argument("--out", type=Path, help="run folder (default: results/runs/...)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_backend_arguments(parser)


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The run's settings from the command line (validated by :class:`TrainingConfig`)."""
    return TrainingConfig(
        method=args.method, model=args.model, width=args.width, dataset=args.dataset,
        data_dir=args.data_dir, fleet=args.fleet, clients=args.clients,
        per_round=args.per_round, rounds=args.rounds, local_epochs=args.local_epochs,
        batch_size=args.batch_size, lr=args.lr, distill_lr=args.distill_lr,
        partition=args.partition, seed=args.seed, schedule=args.schedule,
        shrink=not args.no_shrink, frozen_bn=args.frozen_bn,
        feature_cache=not args.no_feature_cache, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every, samples_per_client=args.samples_per_client,
        test_samples=args.test_samples, device=args.device,
        backend=getattr(args, "backend", "local"),
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out: the folder of the run to continue")
    out = args.out or run_dir(REPO / "results", f"train-{args.method}", repo=REPO)
    if (out / "rounds.jsonl").exists() and not args.resume:
        raise ConfigError(f"{out} already holds a run; pass --resume or a new --out")
    print(f"run folder: {out}")
    bars: list[tqdm] = []  # made at the first round, so bad input fails before any output

    def progress(record: RoundRecord) -> None:
        if not bars:
            bars.append(tqdm(total=config.rounds, desc=config.method, unit="round"))
        bar = bars[0]
        if bar.n == 0 and record.round > 1:
            bar.update(record.round - 1)
        acc = "-" if record.accuracy is None else f"{record.accuracy:.3f}"
        bar.set_postfix_str(
            f"{record.stage} step {record.step} ({record.submodel}) acc {acc} "
            f"clients {len(record.participants)}"
        )
        bar.update(1)

    try:
        with backend_session(args):
            run_training(config, out, resume=args.resume, progress=progress, log=print)
    except RoundFailedError as err:
        print(f"profl train: {err}", file=sys.stderr)
        return 1
    finally:
        for bar in bars:
            bar.close()
    return 0
