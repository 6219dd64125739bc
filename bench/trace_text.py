"""One memory report as text: the per-block table, both peaks and the breakdown at the peak
(``profl trace``, the pytest plugin's failure message)."""

from __future__ import annotations

from collections.abc import Mapping

from tabulate import tabulate

from profl_core.memory import MemoryReport
from profl_core.memory.categories import Category

MIB = float(1 << 20)
TOP_CATEGORIES = 3


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:,.2f}"


def _top(breakdown: Mapping[Category, int]) -> str:
    items = sorted(breakdown.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{cat} {_mib(n)}" for cat, n in items[:TOP_CATEGORIES])


def _at(at: tuple[str, str] | None) -> str:
    return f" at {at[0]} ({at[1]})" if at else ""


def render(report: MemoryReport) -> str:
    """The per-block table, the peaks and the breakdown at the tensor peak as text."""
    heap = report.heap_peak_bytes is not None
    rows: list[dict[str, str]] = []
    for b in report.blocks:
        row = {"block": b.block, "phase": b.phase, "tensor peak MiB": _mib(b.tensor_peak_bytes)}
        if heap:
            row["heap peak MiB"] = "" if b.heap_peak_bytes is None else _mib(b.heap_peak_bytes)
        row["top categories"] = _top(b.breakdown)
        rows.append(row)
    threads = f"  threads={report.threads}" if report.threads is not None else ""
    lines = [f"{report.case_key}  probe={report.probe}  device={report.device}{threads}", ""]
    if rows:
        lines += [tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True), ""]
    lines.append(f"tensor peak {_mib(report.tensor_peak_bytes)} MiB{_at(report.peak_at)}; "
                 f"held before the step {_mib(report.before_step_bytes)} MiB")
    if report.heap_peak_bytes is not None:
        lines.append(f"heap peak {_mib(report.heap_peak_bytes)} MiB{_at(report.heap_peak_at)} "
                     "(kernel scratch included)")
    lines.append(f"required {_mib(report.required_bytes)} MiB")
    if report.peak_breakdown:
        breakdown = [{"category": str(c), "MiB": _mib(n)}
                     for c, n in sorted(report.peak_breakdown.items(), key=lambda kv: -kv[1])]
        lines += ["", tabulate(breakdown, headers="keys", tablefmt="github",
                               disable_numparse=True)]
    for key, value in report.extra.items():
        if "." not in key:
            lines.append(f"{key}: {_mib(value)} MiB")
    return "\n".join(lines)
