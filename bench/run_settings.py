"""The settings of one federated run (:class:`TrainingConfig`), the methods they can name and
each method's own options, all checked when the settings are made, before any work.

``profl train`` flags and a suite's ``[accuracy]`` values are made from the fields here
(:data:`TRAINING_FIELDS`); the methods are those of :mod:`profl_core.methods.registry`, and
:func:`method_config` turns the settings into the chosen method's own config.
:func:`run_config` gives the round loop's :class:`~profl_core.fl.RunConfig` of a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from bench.config_fields import FieldSpec, check_value, field_specs, merge_specs
from profl_core.data import DATASET_NAMES
from profl_core.errors import ConfigError, field_names, reject_unknown_keys
from profl_core.fl import FederatedData, RunConfig
from profl_core.fl.method import Method
from profl_core.methods.registry import METHODS, method_info
from profl_core.models import check_model_name, parse_blocks


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Everything one federated run needs: the one list of run settings and their defaults.

    ``profl train`` flags are made from these fields (``per_round`` -> ``--per-round``, help
    from the lines below) and a suite's ``[accuracy]`` table takes any of them as a shared
    value. Settings of one method only (ProFL's ``schedule``, HeteroFL's ``scaler``...) go in
    ``options``.

    Attributes:
        method: Federated method, a registered name (profl, fedavg, heterofl, depthfl...).
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



def run_config(config: TrainingConfig) -> RunConfig:
    """The round loop's settings of the run ``config`` describes."""
    return RunConfig(
        rounds=config.rounds, seed=config.seed, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, frozen_bn=config.frozen_bn,
        feature_cache=config.feature_cache, device=config.device,
        loss_blowup=config.loss_blowup,
    )


# ------------------------------------------------------------------------------------ methods


def option_specs(method: str) -> dict[str, FieldSpec]:
    """The options ``method`` takes: its config's fields that are not TrainingConfig fields
    (nor fixed by the method's name), with their types, defaults and help."""
    info = method_info(method)
    return {name: spec for name, spec in field_specs(info.config_class).items()
            if name not in TRAINING_FIELDS and name not in info.fixed}


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
    entry = method_info(config.method)
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
    return method_info(config.method).build(method_config(config), data)

