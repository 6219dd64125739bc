"""``profl check``: the CI memory gate (DESIGN §5).

Measures the ``memory-ci`` suite and compares each case's tensor and heap peak bytes and
per-block peaks with a baseline file (``--baseline``; in a source checkout by default its
committed ``results/baselines/memory-ci.json``) for this torch minor version. Tensor
peaks are portable; heap peaks (kernel scratch included, predicted at one thread) are compared
only on a machine with the baseline's CPU kernel family (``heap_machine``). Exit codes: 0 when
nothing regressed, 1 on a regression (the table names each case), 2 on unusable input (no
baseline for this torch version, a malformed file). ``--update`` rewrites this torch version's
entry deliberately; other versions' entries are kept.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from bench.memory_suite import MemorySection, measure_with_progress, memory_records
from bench.paths import CHECKOUT_BASELINE
from bench.suites import load_suite
from profl_core.compare import Diff, Status, Values, compare, failed
from profl_core.errors import ConfigError
from profl_core.files import Fields, check_writable_dir, read_json
from profl_core.memory.heap import intra_op_threads
from profl_core.results import SCHEMA_VERSION, atomic_write_text, utc_now

NAME = "check"
HELP = "compare per-case and per-block tensor and heap peaks with the baseline (the CI gate)"
#: The committed baseline of a source checkout; an installed package has none (--baseline).
DEFAULT_BASELINE: Path | None = CHECKOUT_BASELINE
GATED_PREFIXES = ("peak_bytes", "block_peak_bytes:", "heap_peak_bytes", "block_heap_peak_bytes:")
HEAP_PREFIXES = ("heap_peak_bytes", "block_heap_peak_bytes:")
DEFAULT_TOLERANCES = {"peak_bytes": 0.005, "block_peak_bytes": 0.005,
                      "heap_peak_bytes": 0.01, "block_heap_peak_bytes": 0.01}
#: The gate predicts the heap for one intra-op thread (kernel scratch depends on the count).
GATE_THREADS = 1


def heap_machine() -> dict[str, Any]:
    """What the predicted heap depends on besides torch: the CPU's kernel family and threads."""
    return {"cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
            "threads": GATE_THREADS}


def without_heap(values: Values) -> dict[str, dict[str, float]]:
    """``values`` with the heap metrics left out (tensor metrics only)."""
    return {key: {m: v for m, v in metrics.items() if not m.startswith(HEAP_PREFIXES)}
            for key, metrics in values.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="memory-ci", help="suite whose memory section is gated")
    parser.add_argument("--baseline", type=Path,
                        help="baseline JSON file (default in a source checkout: its committed "
                             "results/baselines/memory-ci.json; an installed profl needs it)")
    parser.add_argument("--update", action="store_true",
                        help="rewrite this torch version's baseline with the current numbers")
    parser.add_argument("--all", action="store_true", help="show every row, not only changes")


def torch_minor() -> str:
    """``"2.14"`` for torch 2.14.1+cu130."""
    major, minor = torch.__version__.split(".")[:2]
    return f"{major}.{minor}"


def current_values(section: MemorySection, scratch: Path) -> Values:
    """Measure the section at :data:`GATE_THREADS` threads; ``{case key: {gated metric: bytes}}``.
    """
    with intra_op_threads(GATE_THREADS):
        reports = measure_with_progress(section, scratch, resume=False, desc="check")
    values: dict[str, dict[str, float]] = {}
    for record in memory_records(section, reports):
        if record.metric.startswith(GATED_PREFIXES) and record.unit == "B":
            values.setdefault(record.key, {})[record.metric] = int(record.value)
    return values


def read_baseline(path: Path, version: str | None = None) -> dict[str, Any]:
    """The whole baseline file (an empty skeleton when it does not exist yet), read through
    the guarded JSON reader and checked: ``tolerances`` are numbers, ``torch`` holds one
    object per version and, for ``version``, ``cases`` maps each case to numbers of bytes.

    Raises:
        ConfigError: One line naming the file and the field, and the fix.
    """
    if not path.exists():
        return {"schema_version": SCHEMA_VERSION, "suite": "memory-ci",
                "tolerances": DEFAULT_TOLERANCES, "torch": {}}
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
        if name != version:
            continue
        cases = entry.mapping("cases")
        for key in cases.data:
            metrics = cases.mapping(key)
            for metric in metrics.data:
                metrics.number(metric, "use a number of bytes >= 0", minimum=0)
    return data


def render(diffs: list[Diff], *, show_all: bool) -> str:
    """The diff table (only changed rows unless ``show_all``)."""
    rows = [
        [d.key, d.metric,
         "" if d.baseline is None else f"{d.baseline / 2**20:.3f}",
         "" if d.current is None else f"{d.current / 2**20:.3f}",
         "" if d.relative_change is None else f"{100 * d.relative_change:+.2f}%",
         f"{100 * d.tolerance:.1f}%", str(d.status)]
        for d in diffs if show_all or d.status != Status.OK
    ]
    headers = ["case", "metric", "baseline MiB", "current MiB", "change", "tolerance", "status"]
    return tabulate(rows, headers=headers, tablefmt="github")


def baseline_path(given: Path | None) -> Path:
    """``--baseline`` if given, else the checkout's committed baseline.

    Raises:
        ConfigError: Neither (an installed package has no default baseline).
    """
    if given is not None:
        return given
    if DEFAULT_BASELINE is None:
        raise ConfigError("no --baseline: an installed profl has no default baseline; give "
                          "--baseline PATH (`profl check --update --baseline PATH` creates it)")
    return DEFAULT_BASELINE


def run(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    if suite.memory is None:
        raise ConfigError(f"{suite.path}: no [memory] section to check")
    path = baseline_path(args.baseline)
    version = torch_minor()
    baseline = read_baseline(path, version)
    if args.update:
        check_writable_dir(path.parent, "--baseline")
    elif not path.exists():
        raise ConfigError(f"{path}: no such baseline; run `profl check --update` to "
                          "create it, or give --baseline PATH")
    elif version not in baseline["torch"]:  # before the measuring, not after it
        known = ", ".join(sorted(baseline["torch"])) or "none"
        raise ConfigError(f"{path}: no baseline for torch {version} (have: {known}); "
                          "review the numbers and run `profl check --update`")
    with tempfile.TemporaryDirectory(prefix="profl-check-") as scratch:
        current = current_values(suite.memory, Path(scratch))
    if args.update:
        baseline["torch"][version] = {
            "updated_utc": utc_now(), "probe": suite.memory.probe,
            "batch_size": suite.memory.batch_size, "heap_machine": heap_machine(),
            "cases": current,
        }
        atomic_write_text(path, json.dumps(baseline, indent=1, sort_keys=True) + "\n")
        print(f"updated {path} for torch {version}: {len(current)} cases")
        return 0
    entry = baseline["torch"].get(version)
    if entry is None:
        known = ", ".join(sorted(baseline["torch"])) or "none"
        raise ConfigError(f"{path}: no baseline for torch {version} (have: {known}); "
                          "review the numbers and run `profl check --update`")
    tolerances: Mapping[str, float] = baseline.get("tolerances", DEFAULT_TOLERANCES)
    expected = entry["cases"]
    if entry.get("heap_machine") != heap_machine():  # kernel scratch differs between CPUs
        print(f"note: heap peaks not compared: the baseline's were predicted on "
              f"{entry.get('heap_machine')}, this machine is {heap_machine()}; tensor peaks are")
        expected, current = without_heap(expected), without_heap(current)
    diffs = compare(expected, current, tolerances=tolerances)
    bad = failed(diffs)
    changed = [d for d in diffs if d.status != Status.OK]
    if changed or args.all:
        print(render(diffs, show_all=args.all))
    ok = sum(d.status == Status.OK for d in diffs)
    print(f"\nchecked {len(diffs)} numbers of {len(current)} cases against torch {version}: "
          f"{ok} within tolerance, {len(bad)} failing")
    if bad:
        cases = sorted({d.key for d in bad})
        print(f"FAIL: memory regression in {', '.join(cases)}")
        return 1
    if any(d.status == Status.IMPROVED for d in diffs):
        print("note: some numbers improved beyond tolerance; run `profl check --update` to lock "
              "them in")
    return 0
