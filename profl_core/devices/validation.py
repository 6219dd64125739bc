"""Reading the TOML files of ``devices/``: one table's typed fields, the folder, the name rule.

Every bad field raises :class:`~profl_core.errors.ConfigError` with one line naming the file,
the field and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from profl_core.errors import ConfigError
from profl_core.files import Fields, read_toml

#: Most devices a fleet file may describe (any count, sum of counts): a larger number is a
#: typo, and would only exhaust memory.
MAX_DEVICES = 1_000_000
#: Largest memory a profile or budget may give, in MiB (1 PiB).
MAX_MIB = 2**30


class Table(Fields):
    """A TOML table being validated (:class:`profl_core.files.Fields` with the TOML word)."""

    def __init__(self, data: Any, file: Path, where: str = "") -> None:
        super().__init__(data, file, where, table="table")

    def fail(self, key: str, fix: str) -> NoReturn:
        """Raise a one-line ConfigError for ``key``'s current value."""
        self.bad(key, fix)

    def integer(self, key: str, fix: str = "use a whole number", *, minimum: int | None = None,
                maximum: int | None = MAX_MIB) -> int:
        """A required integer ``>= minimum`` (booleans are rejected; at most ``maximum``)."""
        return super().integer(key, fix, minimum=minimum, maximum=maximum)

    def number(self, key: str, fix: str = "use a number", **_: Any) -> float:  # type: ignore[override]
        """A required finite number ``> 0``."""
        return super().number(key, fix, positive=True)

    def tables(self, key: str, fix: str) -> list[Table]:  # type: ignore[override]
        """A required non-empty array of tables."""
        value = self.items(key, fix, nonempty=True)
        return [Table(item, Path(self.file), f"{self.name(key)}[{i}]")
                for i, item in enumerate(value)]


def read_table(path: Path) -> Table:
    """The top-level table of the TOML file ``path``, to validate."""
    return Table(read_toml(path, "TOML file", missing="check the path"), path)


def toml_files(folder: Path, what: str) -> list[Path]:
    """The ``*.toml`` files of ``folder`` in name order (``what``: "profile", "fleet")."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder; give the folder of {what} files")
    return sorted(folder.glob("*.toml"))


def check_name(table: Table, path: Path) -> str:
    """The table's ``name``, which must be the file's stem."""
    name = table.string("name", f'add name = "{path.stem}"')
    if name != path.stem:
        table.fail("name", f'use name = "{path.stem}" (the file name) or rename the file')
    return name
