"""Suites as TOML files in ``bench/suites/`` (each starts with the command that runs it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.config_fields import FieldSpec, check_value, field_specs
from bench.memory_cases import MemorySection, parse_alternatives
from bench.paths import SUITES_DIR
from bench.run_settings import (
    TRAINING_FIELDS,
    TrainingConfig,
    all_option_specs,
    option_specs,
)
from profl_core.data.partition import partition as split
from profl_core.errors import ConfigError, field_names, reject_unknown_keys
from profl_core.files import read_toml, shown
from profl_core.memory import PROBES
from profl_core.methods.registry import METHODS
from profl_core.models import MODEL_NAMES, ModelSpec, check_model_name
from profl_core.models.block_groups import check_group_syntax

#: TrainingConfig fields an ``[accuracy]`` table does not share, and where they go instead.
PER_RUN: dict[str, str] = {
    "method": "list methods in methods = [...]",
    "label": "name runs with [accuracy.variants.<label>] tables",
    "partition": "list partitions in partitions = [...]",
    "options": "put method options in [accuracy.variants.<label>] tables",
    "backend": "choose it with profl bench --backend",
}
#: TrainingConfig fields a variant table cannot override (the suite's run grid sets them).
NOT_PER_VARIANT: frozenset[str] = frozenset({*PER_RUN, "seed", "data_dir", "devices"})
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*(-[A-Za-z0-9_.]+)*")


@dataclass(frozen=True)
class Variant:
    """A named run setting: a registry ``method``, its ``options`` and TrainingConfig field
    ``overrides`` (``[accuracy.variants.<label>]``)."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class AccuracySection:
    """Federated runs of every method (or variant) on every partition for every seed.

    Each (label, partition, seed) is one :func:`bench.training.run_training` run in the run
    folder's ``runs/<label>-<partition>-s<seed>/`` (:func:`run_name`). The shared settings are
    a :class:`bench.run_settings.TrainingConfig` (``base``); a label is a registry method name
    or a variant's.

    Attributes:
        base: The shared run settings (any TrainingConfig field but those in PER_RUN).
        methods: Registry method names or variant labels, in run order.
        partitions: Partitions, each run for every method.
        seeds: Seeds, each run for every method and partition (default: base's seed).
        variants: Label -> variant (its method, options and field overrides).
        target_accuracy: Test accuracy of the "rounds to target" metric.
        threads: Torch CPU threads per training process (0: torch's default; default: 1 with
            more than one worker, else 0).
        workers: Training runs at once, each in its own process (1: in this process).
    """

    base: TrainingConfig = field(default_factory=TrainingConfig)
    methods: tuple[str, ...] = ("profl", "fedavg")
    partitions: tuple[str, ...] = ("iid", "dirichlet:0.5")
    seeds: tuple[int, ...] = ()
    variants: Mapping[str, Variant] = field(default_factory=dict)
    target_accuracy: float = 0.7
    threads: int | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.seeds:
            object.__setattr__(self, "seeds", (self.base.seed,))

    @property
    def torch_threads(self) -> int:
        """Torch threads per training process (0: leave torch's default)."""
        if self.threads is not None:
            return self.threads
        return 1 if self.workers > 1 else 0

    def config(
        self, label: str, partition: str, seed: int, data_dir: Path | None = None,
        backend: str = "local", devices: Path | None = None,
    ) -> TrainingConfig:
        """The training settings of one (label, partition, seed) run (``data_dir`` and
        ``devices``, when given, replace the suite's)."""
        variant = self.variants.get(label, Variant(method=label))
        return replace(
            self.base, **variant.overrides, method=variant.method, label=label,
            partition=partition, seed=seed, options=variant.options,
            data_dir=data_dir or self.base.data_dir, backend=backend,
            devices=devices or self.base.devices,
        )

    def runs(self) -> list[tuple[str, str, int]]:
        """``(label, partition, seed)`` in run order: seeds outer, then partitions, labels."""
        return [(m, p, s) for s in self.seeds for p in self.partitions for m in self.methods]


def run_name(label: str, partition: str, seed: int) -> str:
    """Sub-folder name of one run: ``<label>-<partition without ':'>-s<seed>``."""
    return f"{label}-{partition.replace(':', '')}-s{seed}"


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


def _whole(table: Mapping[str, Any], key: str, default: int, low: int, high: int,
           where: str) -> int:
    """``table[key]`` (``default`` when absent): a whole number from ``low`` to ``high``."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where} {key} = {shown(value)}; use a whole number from {low} to "
                          f"{high}")
    return value


def _models(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} = {shown(value)}: use a list of model names, e.g. "
                          f"{list(MODEL_NAMES[:2])}")
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
    data = read_toml(path, "suite file")
    reject_unknown_keys(data, {"name", "description", "zoo", "memory", "accuracy", "speed"},
                    str(path))
    for key in ("zoo", "memory", "accuracy", "speed"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"{path}: {key} = {shown(data[key])}; write it as a [{key}] table")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{path}: {key} = {shown(data[key])}; use a string")
    zoo = data.get("zoo", {})
    reject_unknown_keys(zoo, {"models"}, f"{path}: [zoo]")
    memory = None
    if "memory" in data:
        table = data["memory"]
        known = field_names(MemorySection)
        reject_unknown_keys(table, known, f"{path}: [memory]")
        probe = table.get("probe", "predict")
        if not isinstance(probe, str) or probe not in PROBES:
            raise ConfigError(f"{path}: [memory] probe = {shown(probe)}; use one of {PROBES}")
        batch = _whole(table, "batch_size", 64, 1, 2**20, f"{path}: [memory]")
        classes = _whole(table, "num_classes", 10, 2, 100_000, f"{path}: [memory]")
        models = _models(table.get("models", list(MODEL_NAMES)), f"{path}: [memory] models")
        memory = MemorySection(
            models=models, batch_size=batch, probe=probe, num_classes=classes,
            methods=_memory_methods(table.get("methods", []), f"{path}: [memory] methods"),
            model_spec=_model_spec(table.get("model_spec", {}), models,
                                   f"{path}: [memory.model_spec"),
            alternatives=parse_alternatives(table.get("alternatives", []), batch,
                                            f"{path}: [memory] alternatives"),
            workers=_whole(table, "workers", 1, 1, 64, f"{path}: [memory]"),
        )
    speed = None
    if "speed" in data:
        speed = SpeedSection(**_values(data["speed"], field_specs(SpeedSection),
                                       f"{path}: [speed]"))
    accuracy = None
    if "accuracy" in data:
        accuracy = _accuracy(data["accuracy"], path)
    return Suite(
        name=str(data.get("name", path.stem)), path=path,
        zoo_models=_models(zoo.get("models", []), f"{path}: [zoo] models"), memory=memory,
        accuracy=accuracy, speed=speed,
    )


#: What a ``[memory.model_spec."NAME"]`` table may set: every ModelSpec field but the name.
MODEL_SPEC_FIELDS: dict[str, FieldSpec] = {
    k: v for k, v in field_specs(ModelSpec).items() if k != "name"
}


def _model_spec(value: Any, models: tuple[str, ...], where: str) -> dict[str, dict[str, Any]]:
    """``[memory.model_spec."NAME"]`` tables: spec fields of listed models (``where`` is the
    file and the opened table name, closed here)."""
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ConfigError(f'{where}]: write one [memory.model_spec."NAME"] table per model')
    out: dict[str, dict[str, Any]] = {}
    for name, table in value.items():
        here = f'{where}."{name}"]'
        if name not in models:
            raise ConfigError(f"{here}: {name!r} is not in [memory] models; add it there or "
                              "remove the table")
        values = _values(table, MODEL_SPEC_FIELDS, here)
        check_group_syntax(values.get("blocks", ()), where=here)
        try:
            ModelSpec.from_dict({"name": name, **values}, where=here)
        except ConfigError as err:
            raise ConfigError(f"{here}: {err}") from None
        out[name] = values
    return out


def _memory_methods(value: Any, where: str) -> tuple[str, ...]:
    """Registered methods whose sub-models the memory section also measures."""
    if not isinstance(value, list) or any(not isinstance(v, str) or v not in METHODS
                                          for v in value):
        raise ConfigError(f"{where}: use a list of some of {', '.join(METHODS)}")
    return tuple(value)


def _values(table: Any, specs: Mapping[str, FieldSpec], where: str) -> dict[str, Any]:
    """``table``'s values checked against ``specs`` (types of dataclass fields)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: use a TOML table")
    reject_unknown_keys(table, specs, where)
    return {key: check_value(specs[key], value, where) for key, value in table.items()}


#: The keys of an ``[accuracy]`` table that are AccuracySection's own (the rest: base's).
_SECTION_KEYS = ("methods", "partitions", "seeds", "target_accuracy", "threads", "workers")


def _accuracy(table: Any, path: Path) -> AccuracySection:
    where = f"{path}: [accuracy]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: use a TOML table")
    table = dict(table)
    variant_tables = table.pop("variants", {})
    options = all_option_specs()
    for key in table:
        if key in PER_RUN:
            raise ConfigError(f"{where} {key}: not a shared setting; {PER_RUN[key]}")
        if key in options and key not in TRAINING_FIELDS:
            first = next(iter(options[key][1]))
            raise ConfigError(f"{where} {key}: a method option ({', '.join(options[key][1])}); "
                              f"set it in [accuracy.variants.{first}]")
    if "seed" in table and "seeds" in table:
        raise ConfigError(f"{where}: give seed or seeds, not both")
    own = {k: v for k, v in field_specs(AccuracySection).items() if k in _SECTION_KEYS}
    shared = {k: v for k, v in TRAINING_FIELDS.items() if k not in PER_RUN}
    values = _values(table, own | shared, where)
    section_values = {k: values.pop(k) for k in _SECTION_KEYS if k in values}
    try:
        base = TrainingConfig(**values)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    variants = _variants(variant_tables, path)
    section = AccuracySection(base=base, variants=variants, **section_values)
    if section.workers < 1:
        raise ConfigError(f"{where} workers = {section.workers}; use 1 or more")
    if section.threads is not None and section.threads < 0:
        raise ConfigError(f"{where} threads = {section.threads}; use 0 (torch's default) or more")
    if not 0 < section.target_accuracy <= 1:
        raise ConfigError(f"{where} target_accuracy = {section.target_accuracy}; use (0, 1]")
    if min(section.seeds) < 0:
        raise ConfigError(f"{where} seeds = {list(section.seeds)}; use seeds >= 0")
    for field_name in ("methods", "partitions", "seeds"):
        values_ = getattr(section, field_name)
        if len(set(values_)) != len(values_):
            raise ConfigError(f"{where} {field_name} = {list(values_)}; remove the duplicates")
    for label in section.methods:
        if label not in METHODS and label not in variants:
            raise ConfigError(f"{where} methods: {label!r} is neither a method "
                              f"({', '.join(METHODS)}) nor a variant label "
                              "([accuracy.variants.<label>])")
    for label in variants:
        if label not in section.methods:
            raise ConfigError(f"{path}: [accuracy.variants.{label}] not listed in methods; add "
                              f"{label!r} to methods or remove the table")
    try:
        for label, part, seed in section.runs():  # bad options, models, numbers: fail now
            section.config(label, part, seed)
        for part in section.partitions:
            split(part, [i % 10 for i in range(50 * section.base.clients)],
                  section.base.clients, _rng())
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return section


def _variants(tables: Any, path: Path) -> dict[str, Variant]:
    """``[accuracy.variants.<label>]`` tables: ``method`` (default: the label), that method's
    options and TrainingConfig field overrides."""
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError(f"{path}: [accuracy] variants: use [accuracy.variants.<label>] tables")
    overridable = {k: v for k, v in TRAINING_FIELDS.items() if k not in NOT_PER_VARIANT}
    out: dict[str, Variant] = {}
    for label, table in tables.items():
        here = f"{path}: [accuracy.variants.{label}]"
        if not _LABEL.fullmatch(label):
            raise ConfigError(f"{here}: use a label of letters, digits, '_', '.' and '-'")
        method = table.get("method", label)
        if not isinstance(method, str) or method not in METHODS:
            hint = "" if "method" in table else "; set method = \"<a method name>\""
            raise ConfigError(f"{here}: method = {shown(method)}; use one of "
                              f"{', '.join(METHODS)}{hint}")
        if label in METHODS and method != label:
            raise ConfigError(f"{here}: a variant named like a method sets that method's "
                              f"options; use another label for {method}")
        options = option_specs(method)
        for key in table:
            if key != "method" and key not in options and key not in overridable:
                reason = f"; {PER_RUN[key]}" if key in PER_RUN else (
                    " (set per run by the suite)" if key in NOT_PER_VARIANT else "")
                raise ConfigError(
                    f"{here}: unknown key {key!r}{reason}; use method, a run setting "
                    f"({', '.join(overridable)}) or one of {method}'s options "
                    f"({', '.join(options)})")
        rest = {k: v for k, v in table.items() if k != "method"}
        out[label] = Variant(
            method=method,
            options=_values({k: v for k, v in rest.items() if k in options}, options, here),
            overrides=_values({k: v for k, v in rest.items() if k not in options},
                              overridable, here),
        )
    return out


def _rng() -> Any:
    import numpy as np

    return np.random.default_rng(0)
