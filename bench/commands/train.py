"""``profl train``: one federated run (ProFL or a baseline) with results and a curve.

Methods come from :data:`METHODS` (``--method``): ProFL, full-model FedAvg with its three
policies (``fedavg`` = ``alllarge``, ``exclusivefl``, ``allsmall``), ``heterofl``, ``fedrolex``,
``depthfl`` and ``inclusivefl``. Each baseline names its own memory-table cases.

Writes into ``--out`` (default ``results/runs/<machine>/<utc>_<sha>_train-<method>/``):
``rounds.jsonl`` (one record per round), ``checkpoint.pt`` (every ``--checkpoint-every`` rounds
and at the end), ``model.pt`` (the final model's weights), ``result.json`` and
``learning_curve.png`` (made from ``rounds.jsonl``). ``--resume`` continues an interrupted run
in the same ``--out`` and ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bench.commands.data import data_search_dirs
from profl_core.data import DATASET_NAMES, ArrayDataset, load_dataset, partition
from profl_core.devices import Fleet, load_fleet, load_profiles
from profl_core.errors import ConfigError
from profl_core.fl import FederatedData, JsonlSink, RoundRecord, RunConfig, run_federated
from profl_core.fl.selection import require_trainable
from profl_core.fl.types import Method
from profl_core.memory import all_cases
from profl_core.memory.table import required_bytes_table
from profl_core.methods.depthfl import DepthFL, DepthFLConfig
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.fedrolex import FedRolex
from profl_core.methods.heterofl import HeteroFL, HeteroFLConfig
from profl_core.methods.inclusivefl import InclusiveFL
from profl_core.methods.profl import ProFL, ProFLConfig, model_weights, plan
from profl_core.models import MODEL_NAMES, ModelSpec, build_model, check_model_name, native_spec
from profl_core.results import Record, atomic_write_text, new_result, run_dir, write_result

NAME = "train"
HELP = "run federated training (profl or a baseline) on a fleet; write rounds, result, a curve"

REPO = Path(__file__).resolve().parents[2]
DEVICES_DIR = REPO / "devices"
MIB = 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=tuple(METHODS), default="profl")
    parser.add_argument("--model", default="cnn", help=f"one of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--width", type=float, default=1.0, help="model width multiplier")
    parser.add_argument("--dataset", choices=DATASET_NAMES, default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path, help="folder holding the dataset")
    parser.add_argument("--fleet", default="relative-uniform",
                        help="fleet name in devices/fleets or a path to a fleet TOML")
    parser.add_argument("--clients", type=int, default=100,
                        help="number of clients (the first N devices of the fleet)")
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=100, help="total round budget")
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--distill-lr", type=float, default=0.01,
                        help="ProFL basic-layer fit lr (the authors used 1e-5)")
    parser.add_argument("--partition", default="dirichlet:0.5",
                        help="iid, dirichlet:ALPHA or shards:K")
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


def load_data(args: argparse.Namespace) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test split of ``--dataset``."""
    dirs = data_search_dirs(args.data_dir)
    return (
        load_dataset(args.dataset, split="train", search_dirs=dirs),
        load_dataset(args.dataset, split="test", search_dirs=dirs),
    )


def model_spec(args: argparse.Namespace, train: ArrayDataset) -> ModelSpec:
    """The model on the dataset's input shape and classes."""
    check_model_name(args.model)
    c, h, w = train.input_shape
    if h != w:
        raise ConfigError(f"dataset {args.dataset}: {h}x{w} images; models need square inputs")
    return native_spec(args.model, num_classes=train.num_classes, in_channels=c, input_size=h,
                       width=args.width)


def memory_table(
    spec: ModelSpec, args: argparse.Namespace, method: Method | None = None
) -> dict[str, int]:
    """Required bytes of every sub-model (predict probe), keyed by the method's sub-model names.

    ProFL's names are ``full``/``grow:t``/``shrink:t``; a baseline lists its own cases
    (``memory_cases``: width levels, depths), always including ``full``.
    """
    frozen_bn_eval = args.frozen_bn == "eval"
    cases_of = getattr(method, "memory_cases", None)
    if cases_of is not None:
        named = cases_of(spec, batch_size=args.batch_size, frozen_bn_eval=frozen_bn_eval)
    else:
        named = {c.label: c for c in all_cases(spec, batch_size=args.batch_size,
                                                frozen_bn_eval=frozen_bn_eval)}
    table = required_bytes_table(named.values(), probe="predict")
    return {name: table[case.key] for name, case in named.items()}


def spec_blocks(spec: ModelSpec) -> int:
    """Number of blocks T of a model."""
    return build_model(spec).num_blocks


def fleet_path(name: str) -> Path:
    """A fleet name in devices/fleets, or a path."""
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        return path
    return DEVICES_DIR / "fleets" / f"{name}.toml"


def make_fleet(args: argparse.Namespace, full_bytes: int) -> Fleet:
    """The first ``--clients`` devices of ``--fleet`` (relative fleets scale to the full peak)."""
    profiles = load_profiles(DEVICES_DIR / "profiles")
    fleet = load_fleet(fleet_path(args.fleet), profiles, reference_peak_bytes=full_bytes)
    if args.clients > len(fleet.devices):
        raise ConfigError(
            f"--clients {args.clients}: fleet {fleet.name!r} has only {len(fleet.devices)} "
            "devices; use fewer clients or a larger fleet"
        )
    return Fleet(fleet.name, fleet.devices[: args.clients], fleet.kind)


MethodBuilder = Callable[[argparse.Namespace, dict[str, Any], FederatedData], Method]


def _profl(args: argparse.Namespace, common: dict[str, Any], data: FederatedData) -> Method:
    return ProFL(ProFLConfig(**common, distill_lr=args.distill_lr, schedule=args.schedule,
                             shrink=not args.no_shrink))


def _fedavg(policy: str) -> MethodBuilder:
    def build(args: argparse.Namespace, common: dict[str, Any], data: FederatedData) -> Method:
        return FedAvg(FedAvgConfig(**common, policy=policy))  # type: ignore[arg-type]

    return build


def _width(cls: type[HeteroFL]) -> MethodBuilder:
    def build(args: argparse.Namespace, common: dict[str, Any], data: FederatedData) -> Method:
        return cls(HeteroFLConfig(**common), client_data=data.clients)

    return build


def _depth(cls: type[DepthFL]) -> MethodBuilder:
    def build(args: argparse.Namespace, common: dict[str, Any], data: FederatedData) -> Method:
        return cls(DepthFLConfig(**common, metrics_every=args.eval_every), test_data=data.test)

    return build


#: ``--method`` name -> builder from the command's settings and the run's data.
METHODS: dict[str, MethodBuilder] = {
    "profl": _profl,
    "fedavg": _fedavg("alllarge"),
    "alllarge": _fedavg("alllarge"),
    "exclusivefl": _fedavg("exclusivefl"),
    "allsmall": _fedavg("allsmall"),
    "heterofl": _width(HeteroFL),
    "fedrolex": _width(FedRolex),
    "depthfl": _depth(DepthFL),
    "inclusivefl": _depth(InclusiveFL),
}


def make_method(args: argparse.Namespace, data: FederatedData) -> Method:
    """The method with the command's settings (HeteroFL/FedRolex see the client data for label
    masks and sBN; DepthFL/InclusiveFL see the test set for per-exit accuracy)."""
    common: dict[str, Any] = {
        "rounds": args.rounds, "per_round": args.per_round, "local_epochs": args.local_epochs,
        "batch_size": args.batch_size, "lr": args.lr,
    }
    return METHODS[args.method](args, common, data)


def check_args(args: argparse.Namespace) -> None:
    """Reject bad numbers before any work."""
    for name in ("clients", "per_round", "rounds", "local_epochs", "batch_size", "eval_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)}; use 1 or more")
    if args.lr <= 0 or args.distill_lr <= 0:
        raise ConfigError("--lr and --distill-lr must be positive")
    if args.checkpoint_every < 0:
        raise ConfigError("--checkpoint-every must be 0 or more")


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The records of a ``rounds.jsonl`` file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def plot_curve(rounds: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy per round with a dashed line at every step boundary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    evaluated = [r for r in rounds if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.lineplot(x=[r["round"] for r in evaluated], y=[r["accuracy"] for r in evaluated], ax=ax,
                 marker="o" if len(evaluated) < 40 else None)
    for prev, cur in itertools.pairwise(rounds):
        if (prev["stage"], prev["submodel"]) != (cur["stage"], cur["submodel"]):
            ax.axvline(cur["round"] - 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.text(cur["round"] - 0.5, 1.0, f" {cur['stage'][0]}{cur['submodel']}",
                    fontsize=7, va="top", rotation=90, color="grey")
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1.02), title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_records(rounds: list[dict[str, Any]], key: str) -> list[Record]:
    """Final accuracy/loss, rounds, time, participation and the largest required bytes."""
    last = next(r for r in reversed(rounds) if r["accuracy"] is not None)
    participants = [len(r["participants"]) for r in rounds]
    return [
        Record(key=key, metric="final_accuracy", value=float(last["accuracy"]), unit="ratio"),
        Record(key=key, metric="final_loss", value=float(last["loss"]), unit="nat"),
        Record(key=key, metric="rounds", value=float(len(rounds)), unit="count"),
        Record(key=key, metric="train_wall_s", value=float(sum(r["wall_s"] for r in rounds)),
               unit="s"),
        Record(key=key, metric="mean_participants", value=float(np.mean(participants)),
               unit="count"),
        Record(key=key, metric="mean_eligible_share",
               value=float(np.mean([r["eligible_share"] for r in rounds])), unit="ratio"),
        Record(key=key, metric="max_required_bytes",
               value=float(max(max(r["required_bytes"], default=0) for r in rounds)), unit="B"),
    ]


def run(args: argparse.Namespace) -> int:
    check_args(args)
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out: the folder of the run to continue")
    out = args.out or run_dir(REPO / "results", f"train-{args.method}", repo=REPO)
    if (out / "rounds.jsonl").exists() and not args.resume:
        raise ConfigError(f"{out} already holds a run; pass --resume or a new --out")
    train, test = load_data(args)
    spec = model_spec(args, train)
    parts = partition(args.partition, train.y.numpy(), args.clients,
                      np.random.default_rng(args.seed))
    data = FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)
    method = make_method(args, data)
    table = memory_table(spec, args, method)
    fleet = make_fleet(args, table["full"])
    if isinstance(method, ProFL):  # fail before training when a step fits no device
        for name in {p.submodel for p in plan(spec_blocks(spec), shrink=not args.no_shrink)}:
            require_trainable(fleet, table[name], name)
    config = RunConfig(rounds=args.rounds, seed=args.seed, eval_every=args.eval_every,
                       checkpoint_every=args.checkpoint_every, frozen_bn=args.frozen_bn,
                       feature_cache=not args.no_feature_cache, device=args.device)
    model = build_model(spec, generator=torch.Generator().manual_seed(args.seed))
    out.mkdir(parents=True, exist_ok=True)
    print(f"run folder: {out}")
    for name, required in table.items():
        share = fleet.participation(required)
        print(f"  {name:9s} {required / MIB:8.1f} MiB  eligible {share:.0%}")
    bar = tqdm(total=args.rounds, desc=args.method, unit="round")

    def progress(record: RoundRecord) -> None:
        if bar.n == 0 and record.round > 1:
            bar.update(record.round - 1)
        acc = "-" if record.accuracy is None else f"{record.accuracy:.3f}"
        bar.set_postfix_str(
            f"{record.stage} step {record.step} ({record.submodel}) acc {acc} "
            f"clients {len(record.participants)}"
        )
        bar.update(1)

    start = time.perf_counter()
    try:
        state = run_federated(
            method, fleet, data, config, model=model, memory_table=table,
            sink=JsonlSink(out / "rounds.jsonl"), checkpoint_dir=out, resume=args.resume,
            progress=progress,
        )
    finally:
        bar.close()
    wall = time.perf_counter() - start
    weights = model_weights(state) if isinstance(method, ProFL) else state.weights
    torch.save(dict(weights), out / "model.pt")
    rounds = read_rounds(out / "rounds.jsonl")
    key = f"{args.method}/{spec.name}/{args.dataset}/{fleet.name}/seed{args.seed}"
    extra = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                 if k != "run"},
        "memory_table_bytes": table, "session_wall_s": wall,
    }
    result = new_result(f"train-{args.method}", summary_records(rounds, key), repo=REPO,
                        extra=extra)
    write_result(out / "result.json", result)
    plot_curve(rounds, out / "learning_curve.png",
               f"{args.method} {spec.name} on {args.dataset}, fleet {fleet.name}")
    final = result.values("final_accuracy")[key]
    atomic_write_text(out / "README.txt", f"{key}\nfinal accuracy {final:.4f}\n")
    print(f"final accuracy {final:.4f} after {len(rounds)} rounds ({wall:.1f} s); wrote {out}")
    return 0
