"""``profl trace``: one training case's per-block memory table, its peak and the breakdown."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import replace

from tabulate import tabulate

from profl_core.memory import PROBES, MemoryReport, case_from_text, measure
from profl_core.memory.categories import Category
from profl_core.models import check_model_name, native_spec

NAME = "trace"
HELP = "print one case's per-block peak memory (forward/backward), its peak and breakdown"
MIB = float(1 << 20)
TOP_CATEGORIES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name (see `profl models`)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--case", default="full",
                        help="full, grow:T, shrink:T, depth:K or trunc:K")
    parser.add_argument("--probe", default="predict", help=f"one of {', '.join(PROBES)}")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    parser.add_argument("--optimizer", default="sgd", help="sgd or adam")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the probe's)")
    parser.add_argument("--foreach", action=argparse.BooleanOptionalAction, default=None,
                        help="the optimizer's multi-tensor kernels (default: the device's; "
                             "--foreach models a CUDA step with predict)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads while measuring (heap figures depend on it)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON, with required_bytes")


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
                 f"baseline {_mib(report.baseline_bytes)} MiB")
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


def run(args: argparse.Namespace) -> int:
    check_model_name(args.model)
    spec = replace(native_spec(args.model), width=args.width)
    case = case_from_text(spec, args.case, batch_size=args.batch_size, optimizer=args.optimizer,
                          foreach=args.foreach)
    report = measure(case, probe=args.probe, device=args.device, threads=args.threads)
    if args.json:  # the report, plus the number selection uses
        print(json.dumps({**report.to_dict(), "required_bytes": report.required_bytes},
                         sort_keys=True))
    else:
        print(render(report))
    return 0
