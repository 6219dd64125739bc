"""The one exception type for bad user input.

A `ConfigError` carries a single line that names the file or field and the fix. The CLI prints
it without a traceback and exits with code 2.
"""

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any


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


def field_names(cls: type) -> list[str]:
    """The field names of a dataclass type."""
    return [f.name for f in fields(cls)]
