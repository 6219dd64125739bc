"""Schema-versioned result files with provenance, written atomically (DESIGN §3, §5).

A :class:`ResultFile` holds :class:`Record` rows (``key``, ``metric``, ``value``, ``unit``,
``case_hash``). Files are written to a temporary file in the same folder and moved into place
with :func:`os.replace` (:func:`profl_core.files.atomic_write_text`, re-exported here), so a
reader never sees half a file and an interrupted write loses nothing that was there before;
they are read through the guarded JSON reader of :mod:`profl_core.files`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from profl_core.errors import ConfigError
from profl_core.files import Fields, atomic_write_text, read_json, shown

SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Record:
    """One measured number. ``unit`` is ``"B"`` for bytes, ``"s"``, ``"ratio"``, ``"%"``..."""

    key: str
    metric: str
    value: float
    unit: str
    case_hash: str = ""


@dataclass(frozen=True, kw_only=True)
class ResultFile:
    """A suite's records plus where and when they were produced."""

    suite: str
    records: tuple[Record, ...]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["records"] = [asdict(r) for r in self.records]
        return data

    def values(self, metric: str) -> dict[str, float]:
        """``{key: value}`` for one metric."""
        return {r.key: r.value for r in self.records if r.metric == metric}


def case_hash(params: Mapping[str, Any]) -> str:
    """A short stable hash of a case's parameters (sorted JSON, SHA-256, 12 hex digits)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def utc_now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_state(repo: Path | None) -> dict[str, Any]:
    """The commit sha and dirty flag of the checkout at ``repo`` ("unknown" outside git, or
    when ``repo`` is None: code installed as a package)."""
    if repo is None:
        return {"sha": "unknown", "dirty": False}
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, check=True,
        ).stdout
        return {"sha": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"sha": "unknown", "dirty": False}


def provenance(repo: Path | None) -> dict[str, Any]:
    """Machine, software and commit of this run (``repo``: the code's checkout, if any)."""
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": cuda,
        "git": git_state(repo),
    }


def write_result(path: Path, result: ResultFile) -> None:
    """Write a result file atomically as indented JSON."""
    atomic_write_text(path, json.dumps(result.to_json(), indent=1, sort_keys=False) + "\n")


RESULT_FIX = "regenerate it (rerun the suite or the training run)"


def read_result(path: Path) -> ResultFile:
    """Read a result file through the guarded JSON reader.

    Raises:
        ConfigError: One line naming the file and the field: a missing file, bytes that are
            not UTF-8 JSON, another schema version, a wrong top-level type, missing keys or
            values of the wrong type (a record's ``value`` must be a number, not a bool).
    """
    data = read_json(path, "result file", missing="run the suite first", fix=RESULT_FIX)
    top = Fields(data, path, table="object", fix=RESULT_FIX)
    version = top.data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ConfigError(
            f"{path}: schema_version={shown(version)}, this version reads {SCHEMA_VERSION}; "
            "regenerate the file"
        )
    records = []
    for i, item in enumerate(top.items("records", "use a list of records")):
        row = Fields(item, path, f"records[{i}]", table="object", fix=RESULT_FIX)
        row.check_keys(("key", "metric", "value", "unit", "case_hash"))
        records.append(Record(
            key=row.string("key", empty=True), metric=row.string("metric"),
            value=row.number("value", "use a number", finite=False),
            unit=row.string("unit", empty=True),
            case_hash=row.string("case_hash", empty=True) if "case_hash" in row.data else "",
        ))
    for key in ("provenance", "extra"):
        if key in top.data:
            top.mapping(key)
    return ResultFile(
        suite=top.string("suite"), records=tuple(records),
        provenance=top.data.get("provenance", {}),
        created_utc=top.string("created_utc", empty=True) if "created_utc" in top.data else "",
        extra=top.data.get("extra", {}),
    )


def new_result(
    suite: str,
    records: Iterable[Record],
    *,
    repo: Path | None,
    extra: Mapping[str, Any] | None = None,
) -> ResultFile:
    """A result file stamped with the current time and this machine's provenance."""
    return ResultFile(
        suite=suite, records=tuple(records), provenance=provenance(repo),
        created_utc=utc_now(), extra=dict(extra or {}),
    )


def run_dir(root: Path, suite: str, *, repo: Path | None) -> Path:
    """``root/runs/<machine>/<utc>_<sha8>[-dirty]_<suite>/`` (not created; ``repo``: the code's
    checkout, if any, whose commit is in the name)."""
    git = git_state(repo)
    sha = str(git["sha"])[:8] + ("-dirty" if git["dirty"] else "")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return root / "runs" / platform.node() / f"{stamp}_{sha}_{suite}"
