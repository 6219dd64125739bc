"""Suites as TOML files in ``bench/suites/`` (each starts with the command that runs it)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench.memory_suite import MemorySection
from bench.training import TrainingConfig
from profl_core.errors import ConfigError, field_names, reject_unknown_keys
from profl_core.memory import PROBES
from profl_core.models import MODEL_NAMES, check_model_name

SUITES_DIR = Path(__file__).resolve().parent / "suites"


@dataclass(frozen=True, kw_only=True)
class AccuracySection:
    """Federated runs of every method on every partition: same data, model, fleet and seed.

    Each (method, partition) pair is one :func:`bench.training.run_training` run in the run
    folder's ``runs/<method>-<partition>/``. Field meanings are those of
    :class:`bench.training.TrainingConfig`; ``target_accuracy`` sets the "rounds to target"
    metric and ``threads`` (0: torch's default) the torch CPU threads while training.
    """

    dataset: str = "fashion-mnist"
    model: str = "cnn"
    width: float = 1.0
    fleet: str = "relative-uniform"
    clients: int = 100
    per_round: int = 20
    rounds: int = 100
    local_epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    distill_lr: float = 0.01
    partitions: tuple[str, ...] = ("iid", "dirichlet:0.5")
    methods: tuple[str, ...] = ("profl", "fedavg")
    seed: int = 0
    schedule: str = "em"
    samples_per_client: int = 0
    test_samples: int = 0
    eval_every: int = 1
    checkpoint_every: int = 5
    device: str = "cpu"
    target_accuracy: float = 0.7
    threads: int = 0

    def config(
        self, method: str, partition: str, data_dir: Path | None = None, backend: str = "local"
    ) -> TrainingConfig:
        """The training settings of one (method, partition) run."""
        return TrainingConfig(
            method=method, model=self.model, width=self.width, dataset=self.dataset,
            data_dir=data_dir, fleet=self.fleet, clients=self.clients, per_round=self.per_round,
            rounds=self.rounds, local_epochs=self.local_epochs, batch_size=self.batch_size,
            lr=self.lr, distill_lr=self.distill_lr, partition=partition, seed=self.seed,
            schedule=self.schedule, eval_every=self.eval_every,
            checkpoint_every=self.checkpoint_every, samples_per_client=self.samples_per_client,
            test_samples=self.test_samples, device=self.device, backend=backend,
        )

    def runs(self) -> list[tuple[str, str]]:
        """``(method, partition)`` pairs in run order: partitions outer, methods inner."""
        return [(m, p) for p in self.partitions for m in self.methods]


def run_name(method: str, partition: str) -> str:
    """Sub-folder name of one run: ``<method>-<partition>`` without ``:``."""
    return f"{method}-{partition.replace(':', '')}"


@dataclass(frozen=True, kw_only=True)
class SpeedSection:
    """The pytest-benchmark speed suite (``select``: a pytest ``-k`` expression, or all)."""

    select: str = ""


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A named suite: the model-zoo table, the memory, accuracy and speed sections."""

    name: str
    path: Path
    zoo_models: tuple[str, ...]
    memory: MemorySection | None
    accuracy: AccuracySection | None = None
    speed: SpeedSection | None = None


def suite_names() -> list[str]:
    """Names of the shipped suites."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def _models(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: use a list of model names, e.g. {list(MODEL_NAMES[:2])}")
    for name in value:
        check_model_name(name)
    return tuple(value)


def load_suite(name_or_path: str) -> Suite:
    """Load ``bench/suites/<name>.toml`` or a TOML file path; validate every field."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown suite {name_or_path!r}; choose one of "
                          f"{', '.join(suite_names())} or give a .toml path")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    reject_unknown_keys(data, {"name", "description", "zoo", "memory", "accuracy", "speed"},
                    str(path))
    zoo = data.get("zoo", {})
    reject_unknown_keys(zoo, {"models"}, f"{path}: [zoo]")
    memory = None
    if "memory" in data:
        table = data["memory"]
        known = field_names(MemorySection)
        reject_unknown_keys(table, known, f"{path}: [memory]")
        probe = table.get("probe", "predict")
        if probe not in PROBES:
            raise ConfigError(f"{path}: [memory] probe = {probe!r}; use one of {PROBES}")
        batch = table.get("batch_size", 64)
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"{path}: [memory] batch_size = {batch!r}; use a positive integer")
        memory = MemorySection(
            models=_models(table.get("models", list(MODEL_NAMES)), f"{path}: [memory] models"),
            batch_size=batch, probe=probe, num_classes=int(table.get("num_classes", 10)),
            methods=_memory_methods(table.get("methods", []), f"{path}: [memory] methods"),
        )
    speed = None
    if "speed" in data:
        speed = SpeedSection(**_typed(data["speed"], SpeedSection, f"{path}: [speed]"))
    accuracy = None
    if "accuracy" in data:
        accuracy = _accuracy(data["accuracy"], path)
    return Suite(
        name=str(data.get("name", path.stem)), path=path,
        zoo_models=_models(zoo.get("models", []), f"{path}: [zoo] models"), memory=memory,
        accuracy=accuracy, speed=speed,
    )


def _memory_methods(value: Any, where: str) -> tuple[str, ...]:
    """Baseline families whose sub-models the memory section also measures."""
    from bench.memory_suite import BASELINE_METHODS

    if not isinstance(value, list) or any(v not in BASELINE_METHODS for v in value):
        raise ConfigError(f"{where}: use a list of some of {', '.join(BASELINE_METHODS)}")
    return tuple(value)


def _typed(table: Any, cls: type, where: str) -> dict[str, Any]:
    """``table``'s values checked against the field defaults' types of dataclass ``cls``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: use a TOML table")
    defaults = {f.name: f.default for f in fields(cls)}
    reject_unknown_keys(table, set(defaults), where)
    out: dict[str, Any] = {}
    for key, value in table.items():
        default = defaults[key]
        if isinstance(default, tuple):
            if not isinstance(value, list) or not value or not all(
                    isinstance(v, str) for v in value):
                raise ConfigError(f"{where} {key} = {value!r}; use a non-empty list of strings")
            out[key] = tuple(value)
        elif isinstance(default, bool) or isinstance(value, bool):
            raise ConfigError(f"{where} {key} = {value!r}; use a {type(default).__name__}")
        elif isinstance(default, float) and isinstance(value, int | float):
            out[key] = float(value)
        elif isinstance(value, type(default)):
            out[key] = value
        else:
            raise ConfigError(f"{where} {key} = {value!r}; use a {type(default).__name__}")
    return out


def _accuracy(table: Any, path: Path) -> AccuracySection:
    where = f"{path}: [accuracy]"
    section = AccuracySection(**_typed(table, AccuracySection, where))
    if section.threads < 0:
        raise ConfigError(f"{where} threads = {section.threads}; use 0 (torch's default) or more")
    if not 0 < section.target_accuracy <= 1:
        raise ConfigError(f"{where} target_accuracy = {section.target_accuracy}; use (0, 1]")
    for field_name in ("methods", "partitions"):
        values = getattr(section, field_name)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where} {field_name} = {list(values)}; remove the duplicates")
    try:
        for method, part in section.runs():  # bad methods, models, numbers: fail before work
            section.config(method, part)
        from profl_core.data.partition import partition as split

        for part in section.partitions:
            split(part, [i % 10 for i in range(50 * section.clients)], section.clients, _rng())
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return section


def _rng() -> Any:
    import numpy as np

    return np.random.default_rng(0)
