"""The one exception type for bad user input.

A `ConfigError` carries a single line that names the file or field and the fix. The CLI prints
it without a traceback and exits with code 2.
"""

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad user input: unknown names, malformed files, missing data, impossible budgets."""


def reject_unknown_keys(data: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Raise a one-line ConfigError for the first key of ``data`` not in ``known``.

    Args:
        data: A mapping read from a file or built by a caller.
        known: The accepted keys, e.g. a dataclass's field names.
        where: The file and table (or config name) to put in front of the message.
    """
    allowed = set(known)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(allowed))}"
        )


def build_config(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build the dataclass ``cls`` from ``data``: unknown keys are rejected, lists become tuples.

    TOML and JSON have no tuples, so list values are turned into the tuples frozen configs use.
    """
    reject_unknown_keys(data, field_names(cls), where)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def field_names(cls: type) -> list[str]:
    """The field names of a dataclass type."""
    return [f.name for f in fields(cls)]
