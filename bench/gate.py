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
unusable input before any measuring.
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
from tabulate import tabulate

from bench.memory_cases import MemorySection
from bench.memory_measure import measure_with_progress, memory_records
from bench.suites import Suite
from profl_core.compare import (
    CASE_METRIC,
    Diff,
    Status,
    Values,
    compare_cases,
    failed,
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
#: The rule for "not comparable", as printed by the gate and stated in docs/gate.md.
NOT_COMPARABLE_RULE = (
    "a case is not comparable when its definition hash (SHA-256 of TrainingCase.params() "
    "without fields at their defaults, plus the probe and the gate's thread count) differs "
    "from the baseline's; its numbers are not compared and it neither passes nor fails "
    "(asv's rule)"
)


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
    yet), read through the guarded JSON reader and checked: ``tolerances`` are numbers,
    ``torch`` holds one object per version and, for ``version``, ``cases`` maps each case to
    numbers of bytes and ``definitions`` each of those cases to its SHA-256 definition hash.

    Raises:
        ConfigError: One line naming the file and the field, and the fix.
    """
    if not path.exists():
        return empty_baseline(suite)
    fix = "restore it from git or rebuild it with `profl check --update`"
    data = read_json(path, "baseline", missing=fix, fix=fix)
    top = Fields(data, path, table="object", fix=fix)
    if top.data.get("schema_version") != SCHEMA_VERSION or not isinstance(
            top.data.get("torch"), dict):
        raise ConfigError(f"{path}: not a schema-{SCHEMA_VERSION} baseline; {fix}")
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


# ----------------------------------------------------------------------------------- reporting


def render(diffs: list[Diff], *, show_all: bool) -> str:
    """The diff table (only changed rows unless ``show_all``)."""
    rows = [
        [d.key, d.metric,
         "" if d.baseline is None else f"{d.baseline / 2**20:.3f}",
         "" if d.current is None else f"{d.current / 2**20:.3f}",
         "" if d.relative_change is None else f"{100 * d.relative_change:+.2f}%",
         "" if d.metric == CASE_METRIC else f"{100 * d.tolerance:.1f}%", str(d.status)]
        for d in diffs if show_all or d.status != Status.OK
    ]
    headers = ["case", "metric", "baseline MiB", "current MiB", "change", "tolerance", "status"]
    return tabulate(rows, headers=headers, tablefmt="github")


def _cases(diffs: list[Diff], status: Status) -> list[str]:
    return sorted({d.key for d in diffs if d.status == status})


def _listed(keys: list[str], most: int = 8) -> str:
    shown = ", ".join(keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


# ------------------------------------------------------------------------------------- the gate


def run_gate(
    suite: Suite,
    path: Path,
    *,
    update: bool,
    show_all: bool = False,
    suite_arg: str | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Check ``suite``'s memory section against the baseline file ``path`` (or, with
    ``update``, write this torch version's entry of it atomically); return the exit code.

    ``suite_arg`` is how the user named the suite (for the commands the gate suggests);
    ``out`` receives the report line by line.

    Raises:
        ConfigError: no memory section, a broken baseline, no baseline (without ``update``)
            or none for this torch version; all before any measuring.
    """
    if suite.memory is None:
        raise ConfigError(f"{suite.path}: no [memory] section to check")
    section = suite.memory
    refresh = f"profl check --suite {suite_arg or suite.path} --baseline {path} --update"
    version = torch_minor()
    # --update replaces this version's entry: only the rest of the file must be sound (an
    # entry of an older format, e.g. without definition hashes, is what it is there to fix).
    baseline = read_baseline(path, None if update else version, suite=suite.name)
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
    if entry.get("heap_machine") != heap_machine():  # kernel scratch differs between CPUs
        out(f"note: heap peaks not compared: the baseline's were predicted on "
            f"{entry.get('heap_machine')}, this machine is {heap_machine()}; tensor peaks are")
        expected, values = without_heap(expected), without_heap(values)
    for field, now in (("probe", section.probe), ("batch_size", section.batch_size)):
        if field in entry and entry[field] != now:
            out(f"note: the baseline's {field} is {entry[field]}, the suite's {now}")
    diffs = compare_cases(expected, values, baseline_definitions=entry["definitions"],
                          current_definitions=current.definitions, tolerances=tolerances)
    return _report(diffs, len(values), version, refresh, show_all=show_all, out=out)


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
    return (f" ({len(_cases(diffs, Status.NEW))} new, "
            f"{len(_cases(diffs, Status.NOT_COMPARABLE))} redefined, "
            f"{len(_cases(diffs, Status.MISSING))} dropped)")


def _report(
    diffs: list[Diff],
    cases: int,
    version: str,
    refresh: str,
    *,
    show_all: bool,
    out: Callable[[str], None],
) -> int:
    """Print the table and the verdict; the exit code (0 pass, 1 fail)."""
    bad = failed(diffs)
    if show_all or any(d.status != Status.OK for d in diffs):
        out(render(diffs, show_all=show_all))
    numbers = [d for d in diffs if d.metric != CASE_METRIC]
    ok = sum(d.status == Status.OK for d in numbers)
    failing = [d for d in bad if d.metric != CASE_METRIC]
    regressed = sorted({d.key for d in failing})
    out(f"\nchecked {len(numbers)} numbers of {cases} cases against torch {version}: "
        f"{ok} within tolerance, {len(failing)} failing")
    redefined = _cases(diffs, Status.NOT_COMPARABLE)
    if redefined:
        out(f"WARNING: {len(redefined)} cases not comparable ({_listed(redefined)}): "
            f"{NOT_COMPARABLE_RULE}. If the new definition is intended, refresh the "
            f"baseline: `{refresh}`")
    new = _cases(diffs, Status.NEW)
    if new:
        out(f"note: {len(new)} new cases not in the baseline ({_listed(new)}), not compared; "
            f"add them with `{refresh}`")
    missing = _cases(diffs, Status.MISSING)
    if missing:
        out(f"FAIL: {len(missing)} baseline cases missing from this run ({_listed(missing)}); "
            f"if they were removed on purpose, drop them with `{refresh}`")
    if regressed:
        out(f"FAIL: memory regression in {', '.join(regressed)}")
    if bad:
        return 1
    if any(d.status == Status.IMPROVED for d in diffs):
        out(f"note: some numbers improved beyond tolerance; lock them in with `{refresh}`")
    return 0
