"""The memory gate behind ``profl check`` (DESIGN §5): measure a suite's memory section,
compare it with a baseline file, or refresh that file.

A baseline file holds, per torch minor version, an entry with the probe, the full torch
version, the batch size, the machine the heap peaks were predicted on (:func:`heap_machine`)
and, per case, the gated numbers (tensor and heap peak bytes, per-block peaks) and a
**definition hash** (:func:`definition_hash`: SHA-256 of the case's canonical JSON definition).
Cases are keyed by :func:`gate_key` (the case key without its batch size, so a changed batch
size is a changed definition of the same case, not a new one).

The rules (:func:`profl_core.compare.compare_cases`): a case whose definition hash differs from
the baseline's is *not comparable* (asv's rule): its numbers are not compared, it neither
passes nor fails, and the gate says so with the command that refreshes the baseline. New cases
are reported and not compared; cases the baseline has and the run lacks are *missing* and fail.
Tensor peaks are portable; heap peaks (kernel scratch included, predicted at
:data:`GATE_THREADS` threads) are compared only on a machine with the baseline's CPU kernel
family. :func:`run_gate` returns the exit code: 0 when every comparable number is within its
tolerance, 1 on a regression or a missing case or number, and raises ConfigError (exit 2) on
unusable input before any measuring and without writing: a broken file, a JSON file that is
not a baseline, a baseline made from another suite (:func:`check_suite`: a baseline names its
suite, written by ``--update``). The report's formats are :mod:`bench.gate_output`'s.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from bench.gate_output import FORMATS, cases_with, outcome
from bench.memory_cases import MemorySection
from bench.memory_measure import measure_with_progress, memory_records
from bench.suites import Suite
from profl_core.compare import (
    Status,
    Values,
    compare_cases,
)
from profl_core.errors import ConfigError
from profl_core.files import Fields, check_writable_dir, read_json
from profl_core.memory import TrainingCase
from profl_core.memory.heap import intra_op_threads
from profl_core.results import SCHEMA_VERSION, atomic_write_text, utc_now

GATED_PREFIXES = ("peak_bytes", "block_peak_bytes:", "heap_peak_bytes", "block_heap_peak_bytes:")
HEAP_PREFIXES = ("heap_peak_bytes", "block_heap_peak_bytes:")
DEFAULT_TOLERANCES = {"peak_bytes": 0.005, "block_peak_bytes": 0.005,
                      "heap_peak_bytes": 0.01, "block_heap_peak_bytes": 0.01}
#: The gate predicts the heap for one intra-op thread (kernel scratch depends on the count).
GATE_THREADS = 1
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
#: The fix for a baseline that cannot be read (``--update`` refuses it: it is no fix).
NOT_READABLE_FIX = "restore it (e.g. from git) or give another file with --baseline"
#: The fix for a JSON file that is not a baseline (``--update`` would overwrite it).
NOT_A_BASELINE_FIX = "give the baseline file with --baseline"


def heap_machine() -> dict[str, Any]:
    """What the predicted heap depends on besides torch: the CPU's kernel family and threads."""
    return {"cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
            "threads": GATE_THREADS}


def torch_minor() -> str:
    """``"2.14"`` for torch 2.14.1+cu130."""
    major, minor = torch.__version__.split(".")[:2]
    return f"{major}.{minor}"


def without_heap(values: Values) -> dict[str, dict[str, float]]:
    """``values`` with the heap metrics left out (tensor metrics only)."""
    return {key: {m: v for m, v in metrics.items() if not m.startswith(HEAP_PREFIXES)}
            for key, metrics in values.items()}


# --------------------------------------------------------------------------------- definitions


def _declared(obj: Any) -> dict[str, Any]:
    """A dataclass's fields that differ from their declared defaults (nested likewise), so a
    field added later with a default that keeps the old behaviour leaves old hashes alone."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            out[f.name] = _declared(value)
            continue
        if f.default is not MISSING:
            default: Any = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            out[f.name] = value
            continue
        if value != default:
            out[f.name] = value
    return out


def definition(case: TrainingCase, probe: str) -> dict[str, Any]:
    """What a gated number depends on besides the code: the case (``TrainingCase.params()``
    without the fields at their declared defaults), the probe and the gate's thread count."""
    return {"case": _declared(case), "probe": probe, "threads": GATE_THREADS}


def definition_hash(case: TrainingCase, probe: str) -> str:
    """SHA-256 (hex) of :func:`definition` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(definition(case, probe), sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def gate_key(case: TrainingCase) -> str:
    """The case's key in a baseline: :attr:`TrainingCase.key` without its batch size segment
    (``cnn/grow:2/bs64`` -> ``cnn/grow:2``)."""
    parts = case.key.split("/")
    return "/".join(p for i, p in enumerate(parts) if not (i == 2 and p == f"bs{case.batch_size}"))


# ----------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    """A section's gated numbers (``{gate key: {metric: bytes}}``) and definition hashes."""

    values: dict[str, dict[str, float]]
    definitions: dict[str, str]


def current_values(section: MemorySection, scratch: Path) -> Measured:
    """Measure the section at :data:`GATE_THREADS` threads (case reports under ``scratch``)."""
    with intra_op_threads(GATE_THREADS):
        reports = measure_with_progress(section, scratch, resume=False, desc="check")
    cases = {case.key: case for case in section.cases()}
    values: dict[str, dict[str, float]] = {}
    for record in memory_records(section, reports):
        case = cases.get(record.key)
        if case is not None and record.metric.startswith(GATED_PREFIXES) and record.unit == "B":
            values.setdefault(gate_key(case), {})[record.metric] = int(record.value)
    definitions = {gate_key(c): definition_hash(c, section.probe) for c in cases.values()}
    return Measured(values=values, definitions=definitions)


# ------------------------------------------------------------------------------------ baseline


def empty_baseline(suite: str) -> dict[str, Any]:
    """The skeleton of a new baseline file."""
    return {"schema_version": SCHEMA_VERSION, "suite": suite,
            "tolerances": dict(DEFAULT_TOLERANCES), "torch": {}}


def read_baseline(path: Path, version: str | None = None, *,
                  suite: str = "memory-ci") -> dict[str, Any]:
    """The whole baseline file (an empty skeleton naming ``suite`` when it does not exist
    yet), read through the guarded JSON reader and checked: it is a baseline (an object with
    ``schema_version`` and ``torch``), ``suite`` (when present) is a name, ``tolerances`` are
    numbers, ``torch`` holds one object per version and, for ``version``, ``cases`` maps each
    case to numbers of bytes and ``definitions`` each of those cases to its SHA-256 hash.

    Raises:
        ConfigError: One line naming the file and the field, and the fix (never ``--update``:
            it refuses a file it cannot read, and would overwrite one that is not a baseline).
    """
    if not path.exists():
        return empty_baseline(suite)
    fix = NOT_READABLE_FIX
    data = read_json(path, "baseline", missing=fix, fix=fix)
    if not isinstance(data, dict) or "torch" not in data or "schema_version" not in data:
        raise ConfigError(f"{path}: not a profl check baseline (no schema_version and torch "
                          f"fields); {NOT_A_BASELINE_FIX}")
    top = Fields(data, path, table="object", fix=fix)
    if top.data["schema_version"] != SCHEMA_VERSION or not isinstance(top.data["torch"], dict):
        raise ConfigError(f"{path}: not a schema-{SCHEMA_VERSION} baseline; {fix}")
    if "suite" in top.data:
        top.string("suite", "use the name of the suite the baseline was made from")
    if "tolerances" in top.data:
        tolerances = top.mapping("tolerances")
        for key in tolerances.data:
            tolerances.number(key, "use a relative tolerance from 0 to 10", minimum=0,
                              maximum=10)
    versions = top.mapping("torch")
    for name in versions.data:
        entry = versions.mapping(name)
        if name == version:
            check_entry(entry)
    return data


def check_suite(baseline: Mapping[str, Any], path: Path, suite: Suite,
                suite_arg: str | None) -> None:
    """Refuse a baseline made from another suite (one without a ``suite`` is not checked).

    Raises:
        ConfigError: One line naming both suites and the fix; it suggests no ``--update``
            (only, when it exists beside ``path``, the suite's own baseline to check against).
    """
    made_from = baseline.get("suite")
    if not path.exists() or made_from is None or made_from == suite.name:
        return
    named = suite_arg or str(suite.path)
    own = path.parent / (re.sub(r"[^A-Za-z0-9._-]+", "-", suite.name) + ".json")
    if own.exists() and _made_from(own) == suite.name:
        fix = f"check it against its own: `profl check --suite {named} --baseline {own}`"
    else:
        fix = (f"give a baseline made from suite {suite.name!r} with --baseline (a new file; "
               f"`profl check --help` says how to create one)")
    raise ConfigError(f"{path}: a baseline of suite {made_from!r}, not of suite "
                      f"{suite.name!r} ({named}); {fix}")


def _made_from(path: Path) -> object:
    """The ``suite`` a file names, or ``None`` when it is not a readable baseline."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data.get("suite") if isinstance(data, dict) and "torch" in data else None


def check_entry(entry: Fields) -> None:
    """One torch version's entry: ``cases`` maps each case to numbers of bytes and
    ``definitions`` each of those cases (and no other) to its SHA-256 definition hash.

    Raises:
        ConfigError: One line naming the file and the field.
    """
    cases = entry.mapping("cases")
    for key in cases.data:
        metrics = cases.mapping(key)
        for metric in metrics.data:
            metrics.number(metric, "use a number of bytes >= 0", minimum=0)
    definitions = entry.mapping("definitions")
    for key in cases.data:
        value = definitions.string(key, "use the case's SHA-256 definition hash")
        if not HASH_PATTERN.fullmatch(value):
            definitions.bad(key, "use the case's SHA-256 definition hash (64 hex digits)")
    for key in definitions.data:
        if key not in cases.data:
            definitions.bad(key, "remove it: no such case in cases")


# ------------------------------------------------------------------------------------- the gate


def run_gate(
    suite: Suite,
    path: Path,
    *,
    update: bool,
    show_all: bool = False,
    details: bool = False,
    fmt: str = "text",
    output: Path | None = None,
    suite_arg: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Check ``suite``'s memory section against the baseline file ``path`` (or, with
    ``update``, write this torch version's entry of it atomically); return the exit code.

    ``fmt`` is one of :data:`bench.gate_output.FORMATS` (``details``/``show_all``: the
    per-block table, changed rows or every row, in the text format); ``output`` receives the
    report instead of ``out`` (which then gets the totals line). ``suite_arg`` is how the
    user named the suite (for the commands the gate suggests); ``out`` receives the report.

    Raises:
        ConfigError: no memory section, a broken baseline, one made from another suite, no
            baseline (without ``update``) or none for this torch version; all before any
            measuring, and without writing anything.
    """
    if suite.memory is None:
        raise ConfigError(f"{suite.path}: no [memory] section to check")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if update and (fmt != "text" or output is not None):
        raise ConfigError("--format and --output report a check; --update writes the baseline "
                          "and prints one line: leave them out")
    if output is not None:
        check_writable_dir(output.parent, "--output")
    section = suite.memory
    refresh = f"profl check --suite {suite_arg or suite.path} --baseline {path} --update"
    version = torch_minor()
    # --update replaces this version's entry: only the rest of the file must be sound (an
    # entry of an older format, e.g. without definition hashes, is what it is there to fix).
    baseline = read_baseline(path, None if update else version, suite=suite.name)
    check_suite(baseline, path, suite, suite_arg)
    if update:
        check_writable_dir(path.parent, "--baseline")
    elif not path.exists():
        raise ConfigError(f"{path}: no such baseline; create it with `{refresh}`")
    elif version not in baseline["torch"]:  # before the measuring, not after it
        known = ", ".join(sorted(baseline["torch"])) or "none"
        raise ConfigError(f"{path}: no baseline for torch {version} (have: {known}); "
                          f"review the numbers and run `{refresh}`")
    with tempfile.TemporaryDirectory(prefix="profl-check-") as scratch:
        current = current_values(section, Path(scratch))
    entry = baseline["torch"].get(version)
    if update:
        return _write(baseline, path, suite, section, current, entry, out)
    assert entry is not None  # checked above
    tolerances: Mapping[str, float] = baseline.get("tolerances", DEFAULT_TOLERANCES)
    expected, values = entry["cases"], current.values
    notes = []
    if entry.get("heap_machine") != heap_machine():  # kernel scratch differs between CPUs
        notes.append(f"note: heap peaks not compared: the baseline's were predicted on "
                     f"{entry.get('heap_machine')}, this machine is {heap_machine()}; tensor "
                     f"peaks are")
        expected, values = without_heap(expected), without_heap(values)
    for field, now in (("probe", section.probe), ("batch_size", section.batch_size)):
        if field in entry and entry[field] != now:
            notes.append(f"note: the baseline's {field} is {entry[field]}, the suite's {now}")
    diffs = compare_cases(expected, values, baseline_definitions=entry["definitions"],
                          current_definitions=current.definitions, tolerances=tolerances)
    result = outcome(diffs, suite=suite.name, baseline=str(path), version=version,
                     measured_cases=len(values), notes=notes, refresh=refresh)
    report = FORMATS[fmt](result, details=details, show_all=show_all)
    if output is None:
        out(report)
    else:
        atomic_write_text(output, report + "\n")
        out(f"wrote {output}: {result.totals_line}")
    return result.exit_code


def _write(
    baseline: dict[str, Any],
    path: Path,
    suite: Suite,
    section: MemorySection,
    current: Measured,
    entry: Mapping[str, Any] | None,
    out: Callable[[str], None],
) -> int:
    """Replace this torch version's entry with ``current``; say what changed."""
    version = torch_minor()
    changes = _changes(entry, current, path, version)
    baseline["suite"] = suite.name
    baseline["torch"][version] = {
        "updated_utc": utc_now(), "probe": section.probe, "torch_version": torch.__version__,
        "batch_size": section.batch_size, "heap_machine": heap_machine(),
        "cases": current.values, "definitions": current.definitions,
    }
    atomic_write_text(path, json.dumps(baseline, indent=1, sort_keys=True) + "\n")
    out(f"updated {path} for torch {version}: {len(current.values)} cases{changes}")
    return 0


def _changes(entry: Any, current: Measured, path: Path, version: str) -> str:
    """What refreshing the entry ``entry`` (``None``: there is none) with ``current`` changes."""
    if entry is None:
        return " (new entry)"
    try:
        check_entry(Fields(entry, path, f"torch.{version}", table="object"))
    except ConfigError:
        return " (replaced an entry of an older format)"
    diffs = compare_cases(entry["cases"], current.values,
                          baseline_definitions=entry["definitions"],
                          current_definitions=current.definitions, tolerances={})
    return (f" ({len(cases_with(diffs, Status.NEW))} new, "
            f"{len(cases_with(diffs, Status.NOT_COMPARABLE))} redefined, "
            f"{len(cases_with(diffs, Status.MISSING))} dropped)")
