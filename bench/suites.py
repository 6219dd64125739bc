"""Suites as TOML files in ``bench/suites/`` (each starts with the command that runs it)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench.memory_suite import MemorySection
from profl_core.errors import ConfigError
from profl_core.memory import PROBES
from profl_core.models import MODEL_NAMES, check_model_name

SUITES_DIR = Path(__file__).resolve().parent / "suites"


@dataclass(frozen=True)
class Suite:
    """A named suite: the model-zoo table and the memory section for now."""

    name: str
    path: Path
    zoo_models: tuple[str, ...]
    memory: MemorySection | None


def suite_names() -> list[str]:
    """Names of the shipped suites."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def _reject_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: "
                          f"{', '.join(sorted(known))}")


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
    _reject_unknown(data, {"name", "description", "zoo", "memory"}, str(path))
    zoo = data.get("zoo", {})
    _reject_unknown(zoo, {"models"}, f"{path}: [zoo]")
    memory = None
    if "memory" in data:
        table = data["memory"]
        known = {f.name for f in fields(MemorySection)}
        _reject_unknown(table, known, f"{path}: [memory]")
        probe = table.get("probe", "predict")
        if probe not in PROBES:
            raise ConfigError(f"{path}: [memory] probe = {probe!r}; use one of {PROBES}")
        batch = table.get("batch_size", 64)
        if not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"{path}: [memory] batch_size = {batch!r}; use a positive integer")
        memory = MemorySection(
            models=_models(table.get("models", list(MODEL_NAMES)), f"{path}: [memory] models"),
            batch_size=batch, probe=probe, num_classes=int(table.get("num_classes", 10)),
        )
    return Suite(
        name=str(data.get("name", path.stem)), path=path,
        zoo_models=_models(zoo.get("models", []), f"{path}: [zoo] models"), memory=memory,
    )
