"""The one guarded path for files: every reader and every atomic writer of the suite.

Readers (one per format) turn everything a file on disk can be into either its parsed content
or one :class:`~profl_core.errors.ConfigError` line that names the file, what is wrong and the
fix: a missing file or a folder in its place, a file too large for what it claims to be, bytes
that are not UTF-8, a decode error, a wrong top-level type, a nesting too deep for the parser.

* :func:`read_toml` - a TOML file as a dict (``tomllib``; nothing is evaluated).
* :func:`read_json` - a JSON document (NaN and Infinity are read as floats, as Python writes
  them; the checkers decide where they are allowed).
* :func:`read_jsonl` - JSON lines; a torn *trailing* line (no newline, not JSON: a write cut
  by a kill or a full disk) is dropped and reported in :attr:`JsonLines.torn`, a bad line
  anywhere else is an error.
* :func:`load_torch` - a torch file with ``weights_only=True`` (nothing is unpickled).

:class:`Fields` reads typed values out of the parsed mapping: missing keys, wrong types (a bool
is not an int), non-finite or out-of-range numbers and unknown keys become one line naming the
file and the field (``devices[3].count = 1e+11; use ...``).

Writers: :func:`atomic_write_text` and :func:`atomic_write_bytes` write a temporary file in the
target folder and move it into place with :func:`os.replace`, so a reader never sees half a
file and a failed write (full disk, a kill) leaves the earlier file byte-identical. The
temporary file is created with mode ``0o666`` minus the umask, like any other file the suite
writes (``tempfile.mkstemp`` would make it 0600).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from profl_core.errors import ConfigError

#: Largest text file (TOML, JSON, JSON lines) any reader accepts: no config, result, rounds or
#: baseline file of the suite comes near it, so a larger one is not what it claims to be.
MAX_TEXT_BYTES = 256 * 2**20
#: Largest torch file :func:`load_torch` opens.
MAX_TORCH_BYTES = 64 * 2**30
#: Longest value shown in an error message.
SHOWN_CHARS = 60


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


def shown(value: Any) -> str:
    """``repr(value)`` on one line, cut to :data:`SHOWN_CHARS` characters."""
    text = one_line(repr(value))
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def fail(path: Path | str, message: str) -> NoReturn:
    """Raise ``ConfigError("<path>: <message>")`` as one line."""
    raise ConfigError(one_line(f"{path}: {message}"))


# ------------------------------------------------------------------------------------ reading


def read_bytes(path: Path, what: str, *, missing: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of ``path``; any reason they cannot be had is a ConfigError.

    Args:
        path: The file.
        what: What the file should be ("fleet file", "result file"), for the message.
        missing: The fix when the file does not exist.
        limit: Largest accepted size in bytes.
    """
    try:
        if path.is_dir():
            fail(path, f"is a folder, not a {what}; give the {what} itself")
        size = path.stat().st_size
        if size > limit:
            fail(path, f"{size} bytes, more than any {what} ({limit} bytes); "
                       f"is it really a {what}?")
        return path.read_bytes()
    except FileNotFoundError:
        fail(path, f"no such {what}; {missing}")
    except OSError as err:
        fail(path, f"cannot read the {what} ({err.strerror or type(err).__name__}); "
                   "check its permissions")


def read_text(path: Path, what: str, *, missing: str) -> str:
    """The UTF-8 text of ``path`` (see :func:`read_bytes`); other encodings are refused."""
    data = read_bytes(path, what, missing=missing)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        fail(path, f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                   f"save the {what} as UTF-8")


def read_toml(path: Path, what: str, *, missing: str = "check the path") -> dict[str, Any]:
    """A TOML file as a dict; bad bytes, encodings and syntax are one ConfigError line."""
    text = read_text(path, what, missing=missing)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        fail(path, f"not valid TOML ({err}); fix the syntax")
    except RecursionError:
        fail(path, f"nested too deeply to be a {what}; fix the file")


def read_json(path: Path, what: str, *, missing: str, fix: str) -> Any:
    """A JSON document; ``fix`` is the advice for a file that is not JSON."""
    text = read_text(path, what, missing=missing)
    return parse_json(text, path, what, fix=fix)


def parse_json(text: str, path: Path | str, what: str, *, fix: str) -> Any:
    """``json.loads(text)`` with its failures as one ConfigError line about ``path``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        fail(path, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); {fix}")
    except RecursionError:
        fail(path, f"nested too deeply to be a {what}; {fix}")


@dataclass(frozen=True)
class JsonLines:
    """The documents of a JSON-lines file and, when its last line was torn, what was dropped.

    Attributes:
        records: One parsed document per complete line (blank lines skipped).
        lines: The 1-based line number of each record.
        texts: The text of each record's line, without its line break.
        torn: ``None``, or a one-line note on the dropped torn trailing line.
    """

    records: list[Any]
    lines: list[int]
    texts: list[str]
    torn: str | None = None


def read_jsonl(path: Path, what: str, *, missing: str, fix: str) -> JsonLines:
    """A JSON-lines file. A last line that has no newline and is not JSON is a write cut
    short (a kill, a full disk): it is dropped and described in ``torn``. Any other line that
    is not JSON is a ConfigError naming the line."""
    text = read_text(path, what, missing=missing)
    records: list[Any] = []
    numbers: list[int] = []
    texts: list[str] = []
    torn = None
    parts = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and friends
    lines = [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
            numbers.append(number)
            texts.append(line.rstrip("\r\n"))
        except (json.JSONDecodeError, RecursionError) as err:
            if number == len(lines) and not line.endswith("\n"):
                torn = (f"{path}: dropped its torn last line {number} ({len(line)} bytes, "
                        "cut off while it was written)")
                break
            reason = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            fail(path, f"line {number} is not valid JSON ({reason}); {fix}")
    return JsonLines(records=records, lines=numbers, texts=texts, torn=torn)


def load_torch(path: Path, what: str, *, missing: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")``; nothing is unpickled, and
    a file torch cannot read is one ConfigError line ending in ``fix``."""
    import torch

    try:
        if path.is_dir():
            fail(path, f"is a folder, not a {what}; {fix}")
        size = path.stat().st_size
        if size > MAX_TORCH_BYTES:
            fail(path, f"{size} bytes, more than any {what}; {fix}")
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        fail(path, f"no such {what}; {missing}")
    except ConfigError:
        raise
    except (Exception, RecursionError) as err:  # torch raises many types for a bad file
        fail(path, f"not a readable {what} ({type(err).__name__}); {fix}")


# ------------------------------------------------------------------------------------ values


class Fields:
    """A mapping read from a file, with typed reads whose errors name the file and field.

    Args:
        data: The parsed value that should be a mapping.
        file: The file it came from (the start of every message).
        where: The field path of ``data`` inside the file (``""`` for the top level,
            ``devices[3]`` for a table in an array).
        table: The format's word for a mapping (``"table"`` for TOML, ``"object"`` for JSON).
        fix: Advice added to every message about this mapping (e.g. "regenerate the file").
    """

    def __init__(self, data: Any, file: Path | str, where: str = "", *, table: str = "table",
                 fix: str = "") -> None:
        self.file = file
        self.where = where
        self.table = table
        self.fix = fix
        if not isinstance(data, dict):
            what = where or "the file"
            self._raise(f"{what} must be a {table}, not {type(data).__name__}")
        self.data: dict[str, Any] = data

    def _raise(self, message: str) -> NoReturn:
        fail(self.file, f"{message}{'; ' + self.fix if self.fix else ''}")

    def name(self, key: str) -> str:
        """The field's display name, e.g. ``devices[3].ram_mib``."""
        return f"{self.where}.{key}" if self.where else str(key)

    def bad(self, key: str, use: str) -> NoReturn:
        """Raise a one-line ConfigError for ``key``'s current value (``use``: the fix)."""
        raise ConfigError(one_line(
            f"{self.file}: {self.name(key)} = {shown(self.data.get(key))}; {use}"
            f"{'; ' + self.fix if self.fix else ''}"))

    def check_keys(self, allowed: Iterable[str]) -> None:
        """Reject keys not in ``allowed``."""
        allowed = tuple(allowed)
        for key in self.data:
            if key not in allowed:
                self._raise(f"unknown field {self.name(key)}; remove it "
                            f"(allowed: {', '.join(allowed)})")

    def require(self, keys: Iterable[str]) -> None:
        """Every key of ``keys`` is present."""
        for key in keys:
            self.get(key)

    def get(self, key: str, missing: str = "") -> Any:
        """The raw value of a required field."""
        if key not in self.data:
            self._raise(f"{self.name(key)} is missing{'; ' + missing if missing else ''}")
        return self.data[key]

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (and not null)."""
        return self.data.get(key) is not None

    def string(self, key: str, use: str = "use a string", *,
               choices: tuple[str, ...] | None = None, empty: bool = False) -> str:
        """A required string (non-empty unless ``empty``), optionally one of ``choices``."""
        value = self.get(key, use)
        if not isinstance(value, str) or not (empty or value.strip()):
            self.bad(key, use)
        if choices is not None and value not in choices:
            self.bad(key, f"use one of: {', '.join(choices)}")
        return value

    def integer(self, key: str, use: str = "use a whole number", *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        """A required integer in ``[minimum, maximum]``; a bool or a float is not one."""
        value = self.get(key, use)
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(key, use)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.bad(key, use)
        return value

    def number(self, key: str, use: str = "use a number", *, minimum: float | None = None,
               maximum: float | None = None, positive: bool = False,
               finite: bool = True) -> float:
        """A required number (int or float, not bool), finite unless ``finite=False``."""
        value = self.get(key, use)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(key, use)
        if finite and not math.isfinite(value):
            self.bad(key, use)
        if (positive and not value > 0) or (minimum is not None and value < minimum) \
                or (maximum is not None and value > maximum):
            self.bad(key, use)
        return float(value)

    def boolean(self, key: str, use: str = "use true or false") -> bool:
        """A required boolean."""
        value = self.get(key, use)
        if not isinstance(value, bool):
            self.bad(key, use)
        return value

    def mapping(self, key: str) -> Fields:
        """A required nested mapping as :class:`Fields`."""
        value = self.get(key)
        if not isinstance(value, dict):
            self.bad(key, f"use a {self.table}")
        return Fields(value, self.file, self.name(key), table=self.table, fix=self.fix)

    def items(self, key: str, use: str = "use a list", *, nonempty: bool = False) -> list[Any]:
        """A required list."""
        value = self.get(key, use)
        if not isinstance(value, list) or (nonempty and not value):
            self.bad(key, use)
        return value

    def tables(self, key: str, use: str) -> list[Fields]:
        """A required non-empty list of mappings, each as :class:`Fields`."""
        value = self.items(key, use, nonempty=True)
        return [Fields(item, self.file, f"{self.name(key)}[{i}]", table=self.table,
                       fix=self.fix) for i, item in enumerate(value)]

    def optional(self, key: str, read: Callable[[str], Any]) -> Any:
        """``read(key)`` when the key is present and not null, else None."""
        return read(key) if self.has(key) else None


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------ writing


@contextmanager
def _temporary(path: Path, mode: str) -> Iterator[tuple[IO[Any], Path]]:
    """A new file beside ``path`` (mode 0o666 minus the umask), removed unless replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
            yield handle, tmp
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and :func:`os.replace`."""
    with _temporary(path, "w") as (handle, _):
        handle.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and :func:`os.replace`."""
    with _temporary(path, "wb") as (handle, _):
        handle.write(data)


def atomic_save(path: Path, save: Callable[[IO[bytes]], None]) -> None:
    """Call ``save(handle)`` on a temporary binary file, then move it to ``path``."""
    with _temporary(path, "wb") as (handle, _):
        save(handle)


def check_writable_dir(folder: Path, what: str = "--out") -> None:
    """Fail now, not after set-up work, when ``folder`` cannot take the files of a run.

    ``folder`` may not exist yet (it is not created): its nearest existing ancestor must then
    be a writable folder. A small probe file is written, synced and removed, so a read-only
    file system, missing permissions and a full disk are all caught.

    Raises:
        ConfigError: One line naming ``what`` and the folder, the reason and the fix.
    """
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise ConfigError(f"{what} {folder}: {probe_dir} is a file, not a folder; "
                          "give a folder path")
    tmp = probe_dir / f".profl-write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 65536)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise ConfigError(f"{what} {folder}: cannot write in {probe_dir} "
                          f"({err.strerror or type(err).__name__}); choose a writable folder "
                          "with free space") from None
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def dump_json(data: Mapping[str, Any] | list[Any]) -> str:
    """Indented JSON text with a final newline."""
    return json.dumps(data, indent=1) + "\n"


__all__ = [
    "MAX_TEXT_BYTES", "MAX_TORCH_BYTES", "Fields", "JsonLines", "atomic_save",
    "atomic_write_bytes", "atomic_write_text", "check_writable_dir", "dump_json", "fail",
    "is_number", "load_torch", "one_line", "parse_json", "read_bytes", "read_json",
    "read_jsonl", "read_text", "read_toml", "shown",
]
