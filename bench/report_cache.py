"""Memory reports kept across runs: ``profl plan`` measures a case once per machine and code.

A planner run measures hundreds of candidate steps (:mod:`profl_core.memory.plan`); planning
the same model again (another ``--max-blocks``, ``--objective`` or ``--fleet``, a CI job) meets
the same cases. :class:`ReportCache` wraps the probe: a case it has measured before, with the
same probe and thread count, on the same torch and CPU capability, with the same
``profl_core`` source, returns the stored report; any other case is measured and stored.

Each report is one JSON file ``<digest>.json`` in the cache folder (default
``~/.cache/profl/reports``, under ``$XDG_CACHE_HOME`` when set:
:func:`bench.paths.report_cache_dir`; ``profl plan --cache DIR`` or ``--no-cache``), where
``digest`` is the SHA-256 of everything the report depends on (:meth:`ReportCache.identity`):
the case (every field of its spec and options), the probe, the threads, the torch version,
the CPU capability and a digest of every ``profl_core`` source file,
so a change to the library or to torch never returns an old number. Files are written
atomically; an entry that cannot be read back (truncated, edited, another schema, another
case) is a miss: the case is measured again and the entry rewritten, and one line on the
warning stream names the file. A folder that cannot be written (read-only, a file) is one
warning line, and the plan goes on without keeping reports.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import torch

import profl_core
from profl_core.memory import MemoryReport, TrainingCase
from profl_core.results import atomic_write_text

#: The schema name of a cache entry.
CACHE_SCHEMA = "profl-report-cache/1"
Measure = Callable[[TrainingCase], MemoryReport]


@functools.cache
def code_digest() -> str:
    """SHA-256 of every ``profl_core`` source file (path and bytes, in path order)."""
    package = Path(profl_core.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


class ReportCache:
    """The reports of one probe at one thread count, kept in ``directory``.

    Args:
        directory: the cache folder (created on the first write).
        probe: the probe the reports come from.
        threads: the intra-op threads they were measured at.
        warnings: where a bad entry is reported (one line each).

    Attributes:
        hits: cases answered from the folder in this run.
        misses: cases measured (and stored) in this run.
        writable: False once a write failed (one warning line; nothing more is written).
    """

    def __init__(self, directory: Path, *, probe: str, threads: int, warnings: TextIO) -> None:
        self.directory = directory
        self.probe = probe
        self.threads = threads
        self.warnings = warnings
        self.hits = 0
        self.misses = 0
        self.writable = True

    def identity(self, case: TrainingCase) -> dict[str, Any]:
        """Everything a report of ``case`` depends on (what the file name digests), as JSON
        gives it back (lists, not tuples)."""
        return json.loads(json.dumps(
            {"case": asdict(case), "probe": self.probe, "threads": self.threads,
             "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "profl_core": code_digest()}, default=str))

    def path(self, identity: dict[str, Any]) -> Path:
        """The entry's file: the SHA-256 of ``identity``'s canonical JSON."""
        text = json.dumps(identity, sort_keys=True)
        return self.directory / f"{hashlib.sha256(text.encode()).hexdigest()}.json"

    def wrap(self, measure: Measure) -> Measure:
        """``measure`` answering from the folder where it can."""

        def cached(case: TrainingCase) -> MemoryReport:
            identity = self.identity(case)
            path = self.path(identity)
            report = self._read(path, identity)
            if report is not None:
                self.hits += 1
                return report
            report = measure(case)
            self.misses += 1
            self._write(path, {"schema": CACHE_SCHEMA, "identity": identity,
                               "report": report.to_dict()})
            return report

        return cached

    def _warn(self, text: str) -> None:
        print(f"profl: {text}", file=self.warnings)

    def _write(self, path: Path, entry: dict[str, Any]) -> None:
        if not self.writable:
            return
        try:
            atomic_write_text(path, json.dumps(entry, sort_keys=True) + "\n")
        except OSError as err:
            self.writable = False
            self._warn(f"cannot write the report cache {self.directory} "
                       f"({err.strerror or err}); going on without keeping reports (--cache DIR "
                       "to choose another folder)")

    def _read(self, path: Path, identity: dict[str, Any]) -> MemoryReport | None:
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as err:
            self._warn(f"ignoring cache entry {path} ({type(err).__name__}); measuring the case "
                       "again")
            return None
        try:
            entry = json.loads(text)
            if (not isinstance(entry, dict) or entry.get("schema") != CACHE_SCHEMA
                    or entry.get("identity") != identity):
                raise ValueError("not this case's entry")
            return MemoryReport.from_dict(entry["report"])
        except Exception as err:  # any content: the entry is measured again and rewritten
            first = str(err).splitlines()[0] if str(err) else "unreadable"
            self._warn(f"ignoring cache entry {path} ({type(err).__name__}: {first}); measuring "
                       "the case again")
            return None
