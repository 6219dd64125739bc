"""One federated training run from a :class:`TrainingConfig`, shared by ``profl train`` and suites.

:func:`run_training` loads the data (or takes it ready), partitions it, builds the method, its
memory table and the fleet, runs :func:`~profl_core.fl.run_federated` and writes into one
folder: ``run.json`` (first: the full resolved configuration and the code version),
``rounds.jsonl``, ``checkpoint.pt``, ``model.pt``, ``result.json`` (summary records read back
from ``rounds.jsonl``), ``learning_curve.png`` and ``README.txt``. ``result.json`` is written
last, so its presence marks a finished run; ``resume=True`` continues an unfinished one from
its checkpoint and ends with the weights of an uninterrupted run. Resuming is a contract
(:func:`check_resume`): a setting that would change the result is refused, naming it, before
any work.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bench.config_fields import FieldSpec, check_value, field_specs, merge_specs
from bench.paths import CHECKOUT, data_search_dirs, fleet_path, profiles_dir
from bench.planning import read_plan
from profl_core.data import DATASET_NAMES, ArrayDataset, load_dataset, partition
from profl_core.devices import DeviceProfile, Fleet, load_fleet, load_profiles
from profl_core.errors import ConfigError, field_names, reject_unknown_keys
from profl_core.files import Fields, atomic_write_text, fail, read_json, read_jsonl, shown
from profl_core.fl import (
    DivergedError,
    FederatedData,
    JsonlSink,
    RoundRecord,
    RunConfig,
    run_federated,
)
from profl_core.fl.loop import CHECKPOINT_NAME, load_checkpoint, restore_checkpoint
from profl_core.fl.types import Method
from profl_core.memory import TrainingCase
from profl_core.memory.table import method_table, required_bytes_table
from profl_core.methods.depthfl import DepthFL, DepthFLConfig
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.fedavg_fit import FedAvgFit, FedAvgFitConfig
from profl_core.methods.fedrolex import FedRolex
from profl_core.methods.heterofl import HeteroFL, HeteroFLConfig
from profl_core.methods.inclusivefl import InclusiveFL
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import ModelSpec, build_model, check_model_name, native_spec, parse_blocks
from profl_core.results import (
    Record,
    ResultFile,
    git_state,
    new_result,
    read_result,
    write_result,
)

MIB = 2**20


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Everything one federated run needs: the one list of run settings and their defaults.

    ``profl train`` flags are made from these fields (``per_round`` -> ``--per-round``, help
    from the lines below) and a suite's ``[accuracy]`` table takes any of them as a shared
    value. Settings of one method only (ProFL's ``schedule``, HeteroFL's ``scaler``...) go in
    ``options``.

    Attributes:
        method: Federated method, a name in METHODS (profl, fedavg, heterofl, depthfl...).
        label: Name of the run in reports and suite run folders (default: the method name).
        model: Model: a zoo name (cnn, resnet18, resnet34, vgg11, vgg16, vit),
            torchvision:NAME or pkg.module:factory.
        blocks: Block groups of the model, comma-separated, the last the head (default: the
            model's own partition); see profl trace --blocks.
        partition_plan: A plan file from profl plan: train on its planned partition (and its
            identity stand-ins when it was planned with them).
        identity_standins: ProFL's stand-in for a block that keeps its input's shape is the
            identity: nothing to fit for it (see profl trace --identity-standins).
        width: Model width multiplier in (0, 1].
        dataset: Dataset: fashion-mnist, cifar10, cifar100 or synthetic.
        data_dir: Folder holding the dataset (default: $PROFL_DATA_DIR, then the system's).
        fleet: Fleet name (in the devices folder's fleets/; see profl devices) or the path of a
            fleet TOML.
        devices: Devices folder holding profiles/*.toml and fleets/*.toml, used instead of the
            shipped one (default: the shipped profiles and fleets).
        clients: Number of clients: that many devices spread evenly over the fleet.
        per_round: Clients selected per round.
        rounds: Total round budget.
        local_epochs: Local epochs per round.
        batch_size: Local batch size (also the memory table's).
        lr: SGD learning rate.
        partition: Data split over the clients: iid, dirichlet:ALPHA or shards:K.
        seed: The run's one seed (data split, model init, client selection).
        frozen_bn: Batch norm of frozen blocks: eval (fixed statistics) or train.
        feature_cache: Cache the frozen prefix's features per round.
        eval_every: Rounds between test evaluations (and the last round).
        checkpoint_every: Rounds between checkpoints (0: only at the end).
        loss_blowup: The run diverges when a round's mean train loss exceeds this many times
            the first-round loss of its step (0: off).
        samples_per_client: Keep at most this many random samples per client (0: all).
        test_samples: Evaluate on the first this many test samples (0: all).
        device: Torch device for training and evaluation (cpu, cuda).
        backend: Where clients train: local (in process) or ray.
        options: Settings of the method's own config that are not fields here (ProFL's
            schedule, em_window, distill_lr...); checked when the method is built.
    """

    method: str = "profl"
    label: str = ""
    model: str = "cnn"
    blocks: str = ""
    partition_plan: Path | None = None
    identity_standins: bool = False
    width: float = 1.0
    dataset: str = "fashion-mnist"
    data_dir: Path | None = None
    fleet: str = "relative-uniform"
    devices: Path | None = None
    clients: int = 100
    per_round: int = 20
    rounds: int = 100
    local_epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    partition: str = "dirichlet:0.5"
    seed: int = 0
    frozen_bn: Literal["eval", "train"] = "eval"
    feature_cache: bool = True
    eval_every: int = 1
    checkpoint_every: int = 10
    loss_blowup: float = 100.0
    samples_per_client: int = 0
    test_samples: int = 0
    device: str = "cpu"
    backend: str = "local"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}; use one of {', '.join(METHODS)}")
        if not self.label:
            object.__setattr__(self, "label", self.method)
        object.__setattr__(self, "options", {k: tuple(v) if isinstance(v, list) else v
                                             for k, v in self.options.items()})
        check_model_name(self.model)
        if self.blocks:
            parse_blocks(self.blocks, where="blocks")
            if self.partition_plan is not None:
                raise ConfigError("blocks and partition_plan both set; give one partition")
        if self.dataset not in DATASET_NAMES:
            raise ConfigError(f"dataset={self.dataset!r}; use one of {', '.join(DATASET_NAMES)}")
        for name, spec in TRAINING_FIELDS.items():  # bool is not int, nor a string a number
            value = getattr(self, name)
            if spec.kind is not None and not (value is None and spec.optional):
                object.__setattr__(self, name, check_value(spec, value, "run setting"))
        for name, low, high in LIMITS:
            value = getattr(self, name)
            if not (low <= value <= high):
                raise ConfigError(f"{name}={value}; use {low} to {high}")
        for name in ("width", "lr", "loss_blowup"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}={getattr(self, name)}; use a finite number")
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr}; use a positive learning rate")
        if self.per_round > self.clients:
            raise ConfigError(f"per_round={self.per_round} is more than clients="
                              f"{self.clients}; use at most {self.clients} clients per round")
        if self.loss_blowup < 0:
            raise ConfigError(f"loss_blowup={self.loss_blowup}; use 0 or more")
        if not 0 < self.width <= 1:
            raise ConfigError(f"width={self.width}; use a multiplier in (0, 1]")
        if self.frozen_bn not in ("eval", "train"):
            raise ConfigError(f"frozen_bn={self.frozen_bn!r}; use 'eval' or 'train'")
        method_config(self)  # unknown or ill-typed options fail here, before any work

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values (``label`` and ``options`` included)."""
        data = asdict(self)
        data["options"] = {k: list(v) if isinstance(v, tuple) else v
                           for k, v in self.options.items()}
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


#: TrainingConfig's fields (type, default, help) in field order.
TRAINING_FIELDS: dict[str, FieldSpec] = field_specs(TrainingConfig)

#: Ranges of the whole-number settings: (field, lowest, highest). The upper ends are far past
#: any real run; larger numbers are typos that would only exhaust memory or overflow a seed.
LIMITS: tuple[tuple[str, int, int], ...] = (
    ("clients", 1, 100_000), ("per_round", 1, 100_000), ("rounds", 1, 10_000_000),
    ("local_epochs", 1, 100_000), ("batch_size", 1, 2**20), ("eval_every", 1, 10_000_000),
    ("checkpoint_every", 0, 10_000_000), ("samples_per_client", 0, 2**40),
    ("test_samples", 0, 2**40), ("seed", 0, 2**63 - 1),
)

#: Settings a resumed run may change: where the data lives, where clients run (the same seed
#: gives the same result on every backend) and how often it checkpoints. Every other setting
#: changes the result, so ``--resume`` refuses a change to it (:func:`check_resume`).
RESUME_FREE: frozenset[str] = frozenset({"data_dir", "backend", "checkpoint_every"})
RUN_FILE = "run.json"
RUN_FORMAT = 1


# ------------------------------------------------------------------------------------ building


def load_data(config: TrainingConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test split of ``config.dataset``."""
    dirs = data_search_dirs(config.data_dir)
    return (
        load_dataset(config.dataset, split="train", search_dirs=dirs),
        load_dataset(config.dataset, split="test", search_dirs=dirs),
    )


def federated_data(
    config: TrainingConfig, train: ArrayDataset, test: ArrayDataset
) -> FederatedData:
    """Partition ``train`` over the clients (capped per client) and cap the test set."""
    parts = partition(config.partition, train.y.numpy(), config.clients,
                      np.random.default_rng(config.seed))
    if config.samples_per_client:
        cap_rng = np.random.default_rng([config.seed, 1])
        parts = [np.sort(cap_rng.choice(p, config.samples_per_client, replace=False))
                 if len(p) > config.samples_per_client else p for p in parts]
    if config.test_samples and config.test_samples < len(test):
        test = test.subset(np.arange(config.test_samples))
    return FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)


def model_spec(config: TrainingConfig, train: ArrayDataset) -> ModelSpec:
    """The model on the dataset's input shape and classes."""
    c, h, w = train.input_shape
    if h != w:
        raise ConfigError(f"dataset {config.dataset}: {h}x{w} images; models need square inputs")
    blocks = parse_blocks(config.blocks, where="blocks") if config.blocks else ()
    identity = config.identity_standins
    if config.partition_plan is not None:
        blocks, planned_identity = read_plan(config.partition_plan, config.model)
        identity = identity or planned_identity
    return native_spec(config.model, num_classes=train.num_classes, in_channels=c,
                       input_size=h, width=config.width, blocks=blocks,
                       identity_standins=identity)


def memory_table(spec: ModelSpec, config: TrainingConfig, method: Method) -> dict[str, int]:
    """Required bytes of every sub-model ``method`` hands out (its memory plan), predicted on
    the client steps its clients run: the heap peak (live tensors plus kernel scratch) at this
    process's torch thread count, the count the clients train with.

    ``method`` must be a fresh instance (its ``init_state`` is called); the table is computed
    once per process for each method, settings, model, batch size and thread count (suite
    workers share it).
    """
    frozen_bn = config.frozen_bn
    key = (method.name, method.config, spec, config.batch_size, frozen_bn,  # type: ignore[attr-defined]
           torch.get_num_threads())
    if key not in _TABLES:
        reports = method_table(method, spec, batch_size=config.batch_size, frozen_bn=frozen_bn)
        _TABLES[key] = {name: r.required_bytes for name, r in reports.items()}
    return dict(_TABLES[key])


_TABLES: dict[tuple[Any, ...], dict[str, int]] = {}


def reference_bytes(spec: ModelSpec, config: TrainingConfig) -> int:
    """``required_bytes`` of the full model's FedAvg client step: what relative fleets scale
    to, the same for every method of a comparison."""
    case = TrainingCase(model=spec, kind="full", batch_size=config.batch_size,
                        frozen_bn_eval=config.frozen_bn == "eval")
    return _predicted_bytes(case, torch.get_num_threads())


@functools.lru_cache(maxsize=512)
def _predicted_bytes(case: TrainingCase, threads: int) -> int:
    """``required_bytes`` of one case by the predict probe: the predicted heap peak, kernel
    scratch included, deterministic for one machine and thread count, so the runs of one
    process share it."""
    return required_bytes_table([case], probe="predict")[case.key]


def fleet_inputs(config: TrainingConfig) -> tuple[Path, dict[str, DeviceProfile]]:
    """The fleet file and the device profiles of ``config`` (its devices folder, default the
    shipped one), checked before any work.

    Raises:
        ConfigError: An unknown fleet name or a devices folder without ``profiles/``.
    """
    return fleet_path(config.fleet, config.devices), load_profiles(profiles_dir(config.devices))


def make_fleet(config: TrainingConfig, full_bytes: int) -> Fleet:
    """``clients`` evenly spread devices of the fleet (relative fleets scale to the full peak)."""
    path, profiles = fleet_inputs(config)
    fleet = load_fleet(path, profiles, reference_peak_bytes=full_bytes)
    return fleet.spread(config.clients)


@dataclass(frozen=True)
class MethodEntry:
    """A registry method: its config class (with ``from_dict``), how to build it from that
    config and the run's data, and config values the name fixes (FedAvg's ``policy``)."""

    config_class: type[Any]
    build: Callable[[Any, FederatedData], Method]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: Config values taken from TrainingConfig fields of another name: config key -> field.
    renamed: Mapping[str, str] = field(default_factory=dict)


def _fedavg(policy: str) -> MethodEntry:
    return MethodEntry(FedAvgConfig, lambda cfg, data: FedAvg(cfg), fixed={"policy": policy})


def _width(cls: type[HeteroFL]) -> MethodEntry:
    return MethodEntry(HeteroFLConfig, lambda cfg, data: cls(cfg, client_data=data.clients))


def _depth(cls: type[DepthFL]) -> MethodEntry:
    return MethodEntry(DepthFLConfig, lambda cfg, data: cls(cfg, test_data=data.test),
                       renamed={"metrics_every": "eval_every"})


#: Method name -> its config class and builder.
METHODS: dict[str, MethodEntry] = {
    "profl": MethodEntry(ProFLConfig, lambda cfg, data: ProFL(cfg)),
    "profl-accum": MethodEntry(ProFLConfig, lambda cfg, data: ProFL(cfg),
                               fixed={"accumulate": True}),
    "fedavg": _fedavg("alllarge"),
    "alllarge": _fedavg("alllarge"),
    "exclusivefl": _fedavg("exclusivefl"),
    "allsmall": _fedavg("allsmall"),
    "fedavg-fit": MethodEntry(FedAvgFitConfig, lambda cfg, data: FedAvgFit(cfg)),
    "heterofl": _width(HeteroFL),
    "fedrolex": _width(FedRolex),
    "depthfl": _depth(DepthFL),
    "inclusivefl": _depth(InclusiveFL),
}


def option_specs(method: str) -> dict[str, FieldSpec]:
    """The options ``method`` takes: its config's fields that are not TrainingConfig fields
    (nor fixed by the method's name), with their types, defaults and help."""
    entry = METHODS[method]
    return {name: spec for name, spec in field_specs(entry.config_class).items()
            if name not in TRAINING_FIELDS and name not in entry.fixed}


def all_option_specs() -> dict[str, tuple[FieldSpec, dict[str, FieldSpec]]]:
    """Every method's options: ``{name: (spec over all methods, {method: its spec})}``."""
    per_method = {name: option_specs(name) for name in METHODS}
    return {name: (spec, {m: specs[name] for m, specs in per_method.items() if name in specs})
            for name, spec in merge_specs(per_method).items()}


def method_config(config: TrainingConfig) -> Any:
    """The method's own config: shared values from ``config``, then ``config.options``.

    Raises:
        ConfigError: An option the method does not take (naming the method and its options),
            or an option value of the wrong type.
    """
    entry = METHODS[config.method]
    specs = option_specs(config.method)
    where = f"{config.method} options"
    reject_unknown_keys(config.options, specs, where)
    own = field_names(entry.config_class)
    data: dict[str, Any] = {name: getattr(config, name) for name in own
                            if name in TRAINING_FIELDS}
    data |= {key: getattr(config, name) for key, name in entry.renamed.items()}
    data |= dict(entry.fixed)
    data |= {key: None if value is None and specs[key].optional
             else check_value(specs[key], value, where) for key, value in config.options.items()}
    return entry.config_class.from_dict(data)


def make_method(config: TrainingConfig, data: FederatedData) -> Method:
    """The method with the run's settings (HeteroFL/FedRolex see the client data for label
    masks and sBN; DepthFL/InclusiveFL see the test set for per-exit accuracy)."""
    return METHODS[config.method].build(method_config(config), data)


# ------------------------------------------------------------------------------------ results


ROUNDS_FIX = "restore it, or rerun the training run into a new folder"


def read_rounds(path: Path, *, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a ``rounds.jsonl`` file, each checked for the fields the summaries,
    reports and curves read (none when the file is absent: a run that diverged in its first
    round wrote no record). A torn last line is dropped, and ``warn`` told so.

    Raises:
        ConfigError: A line that is not JSON (but the last, torn one), not an object, or lacks
            a field or has one of the wrong type; the message names the line and the field.
    """
    if not path.is_file() and not path.is_dir():
        return []
    read = read_jsonl(path, "rounds file", missing=ROUNDS_FIX, fix=ROUNDS_FIX)
    if read.torn is not None and warn is not None:
        warn(read.torn)
    return [check_round(record, path, number)
            for number, record in zip(read.lines, read.records, strict=True)]


def check_round(record: Any, path: Path, line: int) -> dict[str, Any]:
    """One ``rounds.jsonl`` record, checked (see :func:`read_rounds`)."""
    row = Fields(record, path, f"line {line}", table="object", fix=ROUNDS_FIX)
    row.integer("round", "use a round number >= 1", minimum=1)
    for key in ("stage", "submodel"):
        row.string(key, empty=True)
    row.integer("step", minimum=0)
    for key in ("accuracy", "loss"):  # null when the round was not evaluated
        if row.get(key, "use a number or null") is not None:
            row.number(key, "use a number or null", finite=False)
    row.number("train_loss", finite=False)
    row.number("eligible_share", minimum=0, maximum=1)
    row.number("wall_s", minimum=0)
    for key in ("participants", "required_bytes"):
        items = row.items(key)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            row.bad(key, "use a list of whole numbers")
    if len(row.data["participants"]) != len(row.data["required_bytes"]):
        row.bad("required_bytes", "use one number per participant")
    if "metrics" in row.data:
        row.mapping("metrics")
    if row.has("step_end"):
        row.string("step_end")
    if "dropped" in row.data:
        row.items("dropped")
    return row.data


def read_run_result(run: Path) -> ResultFile:
    """A training run's ``result.json``, with the parts of ``extra`` the reports and resume
    read checked: ``config`` (an object whose ``method``, ``label``, ``partition`` are strings
    and ``seed`` a whole number), ``status`` and ``diverged``."""
    path = run / "result.json"
    result = read_result(path)
    fix = "regenerate it (rerun the training run into a new folder)"
    extra = Fields(dict(result.extra), path, "extra", table="object", fix=fix)
    if "config" in extra.data:
        config = extra.mapping("config")
        for key in ("method", "label", "partition", "fleet"):
            if key in config.data:
                config.string(key, empty=True)
        if "seed" in config.data:
            config.integer("seed", minimum=0)
    if "status" in extra.data:
        extra.string("status", choices=("completed", "diverged"))
    if "diverged" in extra.data:
        extra.mapping("diverged")
    if extra.has("target_accuracy"):
        extra.number("target_accuracy")
    if "fleet" in extra.data:
        extra.string("fleet", empty=True)
    return result


# ------------------------------------------------------------------------------------ resume


def run_record(config: TrainingConfig) -> dict[str, Any]:
    """What ``run.json`` holds: the full resolved configuration and the code version."""
    git = git_state(CHECKOUT)
    return {"format": RUN_FORMAT, "config": config.to_json(), "code": {
        "git_sha": git["sha"], "git_dirty": git["dirty"], "torch": torch.__version__}}


def read_run_record(out: Path) -> dict[str, Any]:
    """``out/run.json``, checked: ``format``, a ``config`` object and a ``code`` object."""
    path = out / RUN_FILE
    fix = "restore it, or start fresh in a new --out"
    top = Fields(read_json(path, "run file", missing=fix, fix=fix), path, table="object",
                 fix=fix)
    if top.get("format") != RUN_FORMAT:
        top.bad("format", f"this version reads format {RUN_FORMAT}")
    top.mapping("config")
    top.mapping("code")
    return top.data


def config_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``field: before -> now`` for every setting that differs (but :data:`RESUME_FREE`)."""
    keys = [k for k in dict.fromkeys([*before, *now]) if k not in RESUME_FREE]
    return [f"{k} {shown(before.get(k))} -> {shown(now.get(k))}" for k in keys
            if before.get(k) != now.get(k)]


def check_resume(config: TrainingConfig, out: Path, *, required: bool = False,
                 warn: Callable[[str], None] | None = None) -> bool:
    """Whether ``out`` holds a run to continue with ``config``, checked before any work.

    A run folder records its configuration in ``run.json`` when it starts. Resuming is
    refused when a setting that changes the result differs (all but :data:`RESUME_FREE`),
    naming each; a different code version (git commit, torch) is only a warning through
    ``warn``. A folder with nothing in it is no run: with ``required`` (``profl train
    --resume``) that is an error, else (a suite's run that never started) it starts fresh.

    Raises:
        ConfigError: A changed setting, a folder holding files of a run but no ``run.json``
            (started by an older version), or nothing to resume when ``required``.
    """
    record = out / RUN_FILE
    if not record.is_file():
        if out.exists() and not out.is_dir():
            fail(out, "is a file, not a run folder; give the folder of the run to continue")
        started = [n for n in ("rounds.jsonl", "checkpoint.pt", "result.json")
                   if (out / n).exists()]
        if started:
            fail(out, f"holds {started[0]} but no {RUN_FILE}, so its settings are unknown "
                      "(started by an older version); start fresh in a new --out")
        if required:
            fail(out, "nothing to resume (no run was started in this folder); drop --resume "
                      "or give the folder of an interrupted run")
        return False
    saved = read_run_record(out)
    changes = config_changes(saved["config"], config.to_json())
    if changes:
        fail(record, f"--resume would change {'; '.join(changes)}; resume with the "
                     "settings the run was started with, or start fresh in a new --out")
    code, now = saved["code"], run_record(config)["code"]
    moved = [k for k in ("git_sha", "torch") if code.get(k) != now[k]]
    if moved and warn is not None:
        warn(f"{out}: started with {', '.join(f'{k} {code.get(k)}' for k in moved)}, resumed "
             f"with {', '.join(f'{k} {now[k]}' for k in moved)}; the weights may differ "
             "from an uninterrupted run")
    return True


def check_device(device: str) -> None:
    """Fail now when ``device`` is not a torch device this machine has (before any work)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device={device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}, but torch sees no CUDA device here; use "
                              "--device cpu or run on a GPU machine")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device={device!r}, but this machine has {count} CUDA "
                              f"device(s); use cuda:0 to cuda:{count - 1}")
    elif parsed.type != "cpu":
        raise ConfigError(f"device={device!r}; use cpu, cuda or cuda:N")


def rounds_to_target(rounds: list[dict[str, Any]], target: float) -> int | None:
    """The first round whose test accuracy reaches ``target``; None when none does."""
    return next((int(r["round"]) for r in rounds
                 if r["accuracy"] is not None and r["accuracy"] >= target), None)


def summary_records(
    rounds: list[dict[str, Any]],
    key: str,
    *,
    full_bytes: int | None = None,
    target_accuracy: float | None = None,
    completed: bool = True,
) -> list[Record]:
    """Final/best accuracy, loss, rounds, time, participation and memory of one run.

    A diverged run (``completed=False``) gets no accuracy, loss or rounds-to-target records:
    its last numbers describe a model on its way to NaN, not a result.

    Args:
        rounds: The run's ``rounds.jsonl`` records.
        key: Record key of the run.
        full_bytes: The full model's required bytes; adds ``full_peak_bytes`` and
            ``memory_reduction`` (1 - the method's largest required bytes / the full model's).
        target_accuracy: Adds ``rounds_to_target`` when some round reaches it.
    """
    evaluated = [r for r in rounds if r["accuracy"] is not None]
    if completed and not evaluated:
        raise ConfigError(f"{key}: no evaluated round; set eval_every to at most rounds")
    participants = [len(r["participants"]) for r in rounds] or [0]
    peak = max((max(r["required_bytes"], default=0) for r in rounds), default=0)
    out: list[Record] = []
    if completed:
        last = evaluated[-1]
        out += [
            Record(key=key, metric="final_accuracy", value=float(last["accuracy"]),
                   unit="ratio"),
            Record(key=key, metric="best_accuracy",
                   value=float(max(r["accuracy"] for r in evaluated)), unit="ratio"),
            Record(key=key, metric="final_loss", value=float(last["loss"]), unit="nat"),
        ]
    out += [
        Record(key=key, metric="rounds", value=float(len(rounds)), unit="count"),
        Record(key=key, metric="train_wall_s", value=float(sum(r["wall_s"] for r in rounds)),
               unit="s"),
        Record(key=key, metric="mean_participants", value=float(np.mean(participants)),
               unit="count"),
        Record(key=key, metric="mean_eligible_share",
               value=float(np.mean([r["eligible_share"] for r in rounds] or [0.0])),
               unit="ratio"),
        Record(key=key, metric="max_required_bytes", value=float(peak), unit="B"),
    ]
    if full_bytes and rounds:
        out += [
            Record(key=key, metric="full_peak_bytes", value=float(full_bytes), unit="B"),
            Record(key=key, metric="memory_reduction", value=1 - peak / full_bytes,
                   unit="ratio"),
        ]
    if completed and target_accuracy is not None:
        reached = rounds_to_target(rounds, target_accuracy)
        if reached is not None:
            out.append(Record(key=key, metric="rounds_to_target", value=float(reached),
                              unit="count"))
    return out


def step_summary(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per method step (runs of equal stage, step and sub-model) of a run.

    Each entry: ``stage``, ``step``, ``submodel``, ``label`` (:func:`step_label`), ``first`` and
    ``last`` round, ``rounds``, ``end`` (the ``step_end`` reason of its last round; None for a
    step cut by the run's end) and ``accuracy`` (its last evaluated test accuracy). A ProFL
    basic-layer fit also gets ``block_accuracy``: the accuracy at the end of training the real
    block it stands in for (``train B_t`` just before it, whose weights the fit leaves alone),
    so ``accuracy`` vs ``block_accuracy`` is the stand-in against the real block.
    """
    steps: list[dict[str, Any]] = []
    for (stage, step, submodel), group in itertools.groupby(
            rounds, key=lambda r: (r["stage"], r["step"], r["submodel"])):
        records = list(group)
        scored = [r["accuracy"] for r in records if r["accuracy"] is not None]
        entry = {
            "stage": stage, "step": step, "submodel": submodel,
            "label": step_label(stage, submodel), "first": records[0]["round"],
            "last": records[-1]["round"], "rounds": len(records),
            "end": records[-1].get("step_end"), "accuracy": scored[-1] if scored else None,
        }
        before = steps[-1] if steps else None
        if submodel.startswith("shrink:") and before is not None \
                and before["submodel"] == f"grow:{step}" and before["stage"] == stage:
            entry["block_accuracy"] = before["accuracy"]
        steps.append(entry)
    return steps


def step_label(stage: str, submodel: str) -> str:
    """A short label for a ProFL phase: ``train B3`` / ``fit basic3`` (shrinking), ``grow B3``."""
    kind, _, step = submodel.partition(":")
    if stage == "shrink":
        return f"fit basic{step}" if kind == "shrink" else f"train B{step}"
    if stage == "grow":
        return f"grow B{step}"
    return submodel


def plot_curve(rounds: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy per round with a dashed line at every step boundary, labelled with the
    step that starts and, at the bottom, why the step before ended (``em``, ``cap``...)."""
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
            ax.text(cur["round"] - 0.5, 1.0, f" {step_label(cur['stage'], cur['submodel'])}",
                    fontsize=7, va="top", rotation=90, color="grey")
            if prev.get("step_end"):
                ax.text(cur["round"] - 0.5, 0.01, f"{prev['step_end']} ", fontsize=6,
                        va="bottom", ha="right", rotation=90, color="grey")
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1.02), title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------ the run


def run_training(
    config: TrainingConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: Callable[[RoundRecord], None] | None = None,
    data: tuple[ArrayDataset, ArrayDataset] | None = None,
    suite: str | None = None,
    target_accuracy: float | None = None,
    log: Callable[[str], None] | None = None,
) -> ResultFile:
    """Run one federated training into ``out`` and return its result file.

    Args:
        config: The run's settings.
        out: Run folder (created); holds the files listed in the module docstring.
        resume: Continue the run recorded in ``out/run.json`` (from ``out/checkpoint.pt``
            when present), refusing changed settings (:func:`check_resume`); an empty or
            missing folder starts fresh. Without it, a folder that already holds a run is
            refused.
        progress: Called with each round's record.
        data: Train and test split already loaded (suites load them once); else loaded here.
        suite: Result-file suite name (default ``train-<method>``).
        target_accuracy: Adds ``rounds_to_target`` to the records.
        log: Receives a few human-readable lines (memory table, final accuracy).

    Returns:
        The result file written to ``out/result.json``.
    """
    def say(line: str) -> None:  # warnings go to stderr, whatever ``log`` is
        print(f"warning: {line}", file=sys.stderr)

    if (out / "rounds.jsonl").exists() and not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume or a new --out")
    check_device(config.device)
    fleet_inputs(config)
    resuming = resume and check_resume(config, out, warn=say)
    if not resuming and (out / RUN_FILE).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume or a new --out")
    train, test = data if data is not None else load_data(config)
    spec = model_spec(config, train)
    fed = federated_data(config, train, test)
    method = make_method(config, fed)
    model = build_model(spec, generator=torch.Generator().manual_seed(config.seed))
    fresh = method.init_state(model, np.random.default_rng(config.seed))
    if resuming:  # a bad checkpoint or rounds file fails before any work
        done = 0
        if (out / CHECKPOINT_NAME).is_file():
            payload = load_checkpoint(out / CHECKPOINT_NAME)
            restore_checkpoint(out / CHECKPOINT_NAME, payload, method=method, fresh=fresh,
                               np_rng=np.random.default_rng(), rounds=config.rounds)
            done = int(payload["round"])
        JsonlSink(out / "rounds.jsonl").kept(done)
    table = memory_table(spec, config, make_method(config, fed))
    full_bytes = reference_bytes(spec, config)
    fleet = make_fleet(config, full_bytes)
    method.check_fleet(fleet, table)  # fail before training when the method fits no device
    run_config = RunConfig(
        rounds=config.rounds, seed=config.seed, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, frozen_bn=config.frozen_bn,  # type: ignore[arg-type]
        feature_cache=config.feature_cache, device=config.device,
        loss_blowup=config.loss_blowup,
    )
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        atomic_write_text(out / RUN_FILE, json.dumps(run_record(config), indent=1) + "\n")
    if log is not None:
        for name, required in table.items():
            share = fleet.participation(required)
            log(f"  {name:9s} {required / MIB:8.1f} MiB  eligible {share:.0%}")
    start = time.perf_counter()
    diverged: DivergedError | None = None
    try:
        state = run_federated(
            method, fleet, fed, run_config, model=model, memory_table=table,
            sink=JsonlSink(out / "rounds.jsonl"), backend=config.backend, checkpoint_dir=out,
            resume=resuming, progress=progress, warn=say,
        )
    except DivergedError as err:  # checkpoint.pt holds the last finite round
        diverged = err
    else:
        weights = method.model_weights(state)
        torch.save(dict(weights), out / "model.pt")
    wall = time.perf_counter() - start
    rounds = read_rounds(out / "rounds.jsonl")
    key = f"{config.label}/{spec.name}/{config.dataset}/{fleet.name}/{config.partition}" \
          f"/seed{config.seed}"
    extra: dict[str, Any] = {
        "config": config.to_json(), "memory_table_bytes": table, "session_wall_s": wall,
        "fleet": fleet.name, "target_accuracy": target_accuracy,
        "status": "completed" if diverged is None else "diverged", "steps": step_summary(rounds),
    }
    if diverged is not None:
        extra["diverged"] = {"round": diverged.round, "stage": diverged.stage,
                             "step": diverged.step, "submodel": diverged.submodel,
                             "what": diverged.what, "message": str(diverged)}
    result = new_result(
        suite or f"train-{config.method}",
        summary_records(rounds, key, full_bytes=full_bytes, target_accuracy=target_accuracy,
                        completed=diverged is None),
        repo=CHECKOUT, extra=extra,
    )
    title = f"{config.method} {spec.name} on {config.dataset}, fleet {fleet.name}"
    plot_curve(rounds, out / "learning_curve.png",
               title if diverged is None else f"{title}: {diverged}")
    if diverged is None:
        final = result.values("final_accuracy")[key]
        outcome = f"final accuracy {final:.4f} after {len(rounds)} rounds"
    else:
        outcome = f"{diverged} (no accuracy is reported; checkpoint.pt holds round " \
                  f"{diverged.round - 1})"
    atomic_write_text(out / "README.txt", f"{key}\n{outcome}\n")
    write_result(out / "result.json", result)  # last: marks the run as finished
    if log is not None:
        log(f"{outcome} ({wall:.1f} s); wrote {out}")
    return result
