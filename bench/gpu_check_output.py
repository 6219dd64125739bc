"""What ``profl gpu-check`` prints and writes: the table, the JSON file, the summary line and
the exit code."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tabulate import tabulate

from bench.gpu_check_probes import PROG, Tolerances
from profl_core.results import atomic_write_text, utc_now

SCHEMA = 1
MIB = float(1 << 20)

TABLE_HEADERS: tuple[str, ...] = (
    "case", "dispatch_mib", "alloc_mib", "untracked_mib", "alloc_vs_disp_%", "worst_block",
    "block_%", "reserved_mib", "res/alloc", "predict_fe_mib", "pred_vs_disp_%", "status",
)


def _mib(nbytes: Any) -> str:
    return f"{int(nbytes) / MIB:.1f}"


def _pct(value: Any) -> str:
    return f"{100 * float(value):+.2f}"


def _status_text(result: Mapping[str, Any]) -> str:
    status = str(result["status"])
    if status == "fail":
        return "FAIL: " + ", ".join(c["name"] for c in result["checks"] if not c["ok"])
    if status == "error":
        return f"ERROR: {result['error']}"
    if status == "skipped":
        return f"skipped: {result['error']}"
    return status


def table_rows(results: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One row per case, in :data:`TABLE_HEADERS` order."""
    rows: list[list[str]] = []
    for result in results:
        n = result.get("numbers") or {}
        status = _status_text(result)
        if not n:
            rows.append([result["case"], *["-"] * (len(TABLE_HEADERS) - 2), status])
            continue
        rows.append([
            result["case"],
            _mib(n["dispatch_peak_bytes"]),
            _mib(n["allocated_peak_bytes"]),
            _mib(n["untracked_before_bytes"]),
            _pct(n["alloc_vs_dispatch"]),
            n["worst_block"] or "-",
            _pct(n["worst_block_rel"]),
            _mib(n["reserved_peak_bytes"]),
            f"{float(n['reserved_over_allocated']):.2f}",
            _mib(n["predict_foreach_peak_bytes"]),
            _pct(n["predict_vs_dispatch"]),
            status,
        ])
    return rows


def render_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The table printed at the end (GitHub markdown)."""
    return tabulate(table_rows(results), headers=list(TABLE_HEADERS), tablefmt="github",
                    disable_numparse=True)


def exit_code(results: Sequence[Mapping[str, Any]]) -> int:
    """0 when every measured case passed (skipped cases do not fail), else 1."""
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


def build_payload(results: Sequence[Mapping[str, Any]], *, device: str, gpu: str | None,
                  batch_size: int, tol: Tolerances, budget_s: float, wall_s: float,
                  provenance_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the JSON file holds."""
    return {
        "schema": SCHEMA,
        "tool": PROG,
        "utc": utc_now(),
        "provenance": dict(provenance_info) if provenance_info is not None else {},
        "device": device,
        "gpu": gpu,
        "batch_size": batch_size,
        "tolerances": asdict(tol),
        "budget_s": budget_s,
        "wall_s": round(wall_s, 1),
        "ok": exit_code(results) == 0,
        "cases": [dict(r) for r in results],
    }


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write the payload atomically as indented JSON."""
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def summary_line(results: Sequence[Mapping[str, Any]], out: Path) -> str:
    """The last line printed."""
    bad = [r["case"] for r in results if r["status"] in ("fail", "error")]
    skipped = sum(r["status"] == "skipped" for r in results)
    measured = len(results) - skipped
    tail = f"; {skipped} skipped (time budget)" if skipped else ""
    if bad:
        return (f"{PROG}: {len(bad)} of {measured} cases outside tolerance or failed: "
                f"{', '.join(bad)}{tail}; numbers in {out}")
    return f"{PROG}: all {measured} cases within tolerance{tail}; numbers in {out}"
