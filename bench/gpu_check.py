"""All GPU checks of the memory probes in one run: ``python -m bench.gpu_check``.

``make gpu-check`` runs it (``GPU_CHECK_ARGS`` passes options).

For whenever a machine with a CUDA device is available; CI never needs it. For each case (by
default cnn, resnet18 and resnet34 at batch 64: ``full``, every ``grow:t`` and ``shrink:2``,
then vgg16 ``grow:5`` if the time budget allows) it measures the same client step three ways:

* ``dispatch`` on the CUDA device (live tensor storages, rounded to 512 B like the allocator);
* ``cuda`` in a fresh process (``torch.cuda.max_memory_allocated`` per block, reserved bytes);
* ``predict`` with the CUDA optimizer modelled (``TrainingCase(foreach=True)``, fake CPU
  tensors),

and checks

(a) ``alloc_vs_dispatch``: the allocator's peak against dispatch's, once the bytes the allocator
    held before the step that no tracked tensor owns (``untracked_before``: the cuBLAS
    workspace) are taken off; relative to dispatch's peak, default tolerance 1%;
(b) ``worst_block``: the same for every ``(block, phase)`` segment, relative to the segment's
    dispatch peak, default 2% (cuDNN workspaces live inside single segments);
(c) ``reserved >= allocated`` (reserved over allocated is reported, not gated);
(d) ``predict_vs_dispatch``: predict (foreach) against dispatch on CUDA, default 1%.

It prints one table, writes every number (and the three reports of each case) as JSON to
``--out`` and exits 0 when every check is within its tolerance, 1 when one is not or a case
failed to measure, 2 on bad arguments or without a CUDA device (one line, nothing written).
Cases not started within ``--budget-s`` are listed as skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import torch
from tabulate import tabulate

from bench.paths import CHECKOUT, RESULTS_DIR
from profl_core.errors import ConfigError
from profl_core.memory import MemoryReport, TrainingCase, case_from_text, measure
from profl_core.memory.case import num_blocks
from profl_core.results import atomic_write_text, provenance, utc_now

PROG = "gpu-check"
SCHEMA = 1
MIB = float(1 << 20)
DEFAULT_OUT = RESULTS_DIR / "runs" / "gpu-check.json"
DEFAULT_MODELS: tuple[str, ...] = ("cnn", "resnet18", "resnet34")
EXTRA_CASES: tuple[str, ...] = ("vgg16:grow:5",)
DEFAULT_BATCH_SIZE = 64
DEFAULT_BUDGET_S = 270.0
DESCRIPTION = (
    "Check the memory probes on a CUDA device: dispatch vs the allocator's peak (a), per block "
    "(b), reserved bytes (c), predict with the foreach optimizer vs dispatch (d). Prints a "
    "table, writes JSON; exit 0 ok, 1 a check failed, 2 bad arguments or no CUDA device."
)


@dataclass(frozen=True)
class Tolerances:
    """Relative tolerances of the gated checks (fractions, not percent)."""

    allocated: float = 0.01
    blocks: float = 0.02
    predict: float = 0.01


class Probes(NamedTuple):
    """How each report of a case is measured (tests pass stand-ins)."""

    dispatch: Callable[[TrainingCase, torch.device], MemoryReport]
    cuda: Callable[[TrainingCase, torch.device], MemoryReport]
    predict: Callable[[TrainingCase], MemoryReport]


def _dispatch(case: TrainingCase, device: torch.device) -> MemoryReport:
    return measure(case, probe="dispatch", device=device)


def _cuda(case: TrainingCase, device: torch.device) -> MemoryReport:
    return measure(case, probe="cuda", device=device)


def _predict(case: TrainingCase) -> MemoryReport:
    return measure(case, probe="predict")


PROBES = Probes(dispatch=_dispatch, cuda=_cuda, predict=_predict)


# --- arguments --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``gpu-check: error: ...``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; write e.g. 0.01") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1); write e.g. 0.01")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; use 1 or more")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g}; use more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.gpu_check``."""
    parser = _Parser(prog=PROG, description=DESCRIPTION)
    parser.add_argument(
        "--case", action="append", default=None, metavar="MODEL:CASE",
        help="a case to check, e.g. resnet18:grow:2 (repeat it; default: "
             f"{', '.join(DEFAULT_MODELS)} full, every grow:t and shrink:2, then "
             f"{', '.join(EXTRA_CASES)})",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file to write")
    parser.add_argument("--tolerance", type=_fraction, default=Tolerances.allocated,
                        help="(a) allocator peak vs dispatch peak, relative")
    parser.add_argument("--block-tolerance", type=_fraction, default=Tolerances.blocks,
                        help="(b) per-(block, phase) peaks, relative")
    parser.add_argument("--predict-tolerance", type=_fraction, default=Tolerances.predict,
                        help="(d) predict (foreach) vs dispatch on CUDA, relative")
    parser.add_argument("--budget-s", type=_positive_float, default=DEFAULT_BUDGET_S,
                        help="start no case after this many seconds (the rest are skipped)")
    return parser


def parse_case_spec(spec: str, *, batch_size: int) -> TrainingCase:
    """``resnet18:grow:2`` -> the case; ConfigError (one line) when it is not one."""
    model, sep, text = spec.partition(":")
    if not sep or not model or not text:
        raise ConfigError(f"--case {spec!r}: write MODEL:CASE, e.g. resnet18:grow:2")
    try:
        return case_from_text(model, text, batch_size=batch_size)
    except ConfigError as err:
        raise ConfigError(f"--case {spec!r}: {err}") from None


def default_cases(batch_size: int) -> list[TrainingCase]:
    """cnn, resnet18, resnet34: full, every grow:t, shrink:2; then :data:`EXTRA_CASES`."""
    cases: list[TrainingCase] = []
    for model in DEFAULT_MODELS:
        full = case_from_text(model, "full", batch_size=batch_size)
        blocks = num_blocks(full.model)
        cases.append(full)
        cases += [case_from_text(model, f"grow:{t}", batch_size=batch_size)
                  for t in range(1, blocks + 1)]
        cases.append(case_from_text(model, "shrink:2", batch_size=batch_size))
    cases += [parse_case_spec(spec, batch_size=batch_size) for spec in EXTRA_CASES]
    return cases


def resolve_device(text: str) -> torch.device:
    """``cuda``/``cuda:N`` as a device; ConfigError for anything else."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {text!r}: not a device; use cuda or cuda:N") from None
    if device.type != "cuda":
        raise ConfigError(f"--device {text!r}: the GPU check runs on cuda or cuda:N")
    return device


def no_cuda_message() -> str | None:
    """The one line to print when there is no CUDA device to check, else ``None``."""
    if torch.cuda.is_available():
        return None
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"{PROG}: no CUDA device (torch {torch.__version__}, {build}); nothing checked; "
            "run it on a machine with a GPU")


# --- the checks -------------------------------------------------------------------------------


def _rel(value: float, reference: float) -> float:
    """``(value - reference) / reference`` (0 against a zero reference)."""
    return (value - reference) / reference if reference else 0.0


def _check(name: str, value: float, tolerance: float | None, *, ok: bool | None = None,
           detail: str = "") -> dict[str, Any]:
    """One check; ``ok`` defaults to ``|value| <= tolerance``."""
    if ok is None:
        ok = tolerance is not None and abs(value) <= tolerance
    return {"name": name, "value": value, "tolerance": tolerance, "ok": ok, "detail": detail}


def evaluate(
    dispatch: MemoryReport, cuda: MemoryReport, predict: MemoryReport, tol: Tolerances
) -> dict[str, Any]:
    """Compare one case's three reports: ``{"numbers": ..., "checks": [...], "status"}``.

    The allocator holds bytes before the step that no tensor of the step owns (the cuBLAS
    workspace of the warm-up step): ``untracked_before`` = cuda baseline - dispatch baseline
    is taken off the allocator's peak and segment peaks before they are compared.
    """
    untracked = cuda.baseline_bytes - dispatch.baseline_bytes
    # Tensor figures throughout: the predicted heap is a CPU-allocator figure.
    d_peak, c_peak = dispatch.tensor_peak_bytes, cuda.tensor_peak_bytes
    p_peak = predict.tensor_peak_bytes
    reserved = int(cuda.extra.get("reserved_peak_bytes", 0))
    numbers: dict[str, Any] = {
        "dispatch_peak_bytes": d_peak,
        "dispatch_baseline_bytes": dispatch.baseline_bytes,
        "allocated_peak_bytes": c_peak,
        "allocated_baseline_bytes": cuda.baseline_bytes,
        "untracked_before_bytes": untracked,
        "requested_peak_bytes": int(cuda.extra.get("requested_peak_bytes", 0)),
        "reserved_peak_bytes": reserved,
        "reserved_baseline_bytes": int(cuda.extra.get("reserved_baseline_bytes", 0)),
        "predict_foreach_peak_bytes": p_peak,
        "alloc_vs_dispatch": _rel(c_peak - untracked, d_peak),
        "reserved_over_allocated": reserved / c_peak if c_peak else 0.0,
        "predict_vs_dispatch": _rel(p_peak, d_peak),
        "blocks": [],
    }
    checks = [_check("alloc_vs_dispatch", numbers["alloc_vs_dispatch"], tol.allocated)]

    worst: tuple[float, str] = (0.0, "")
    missing: list[str] = []
    for seg in dispatch.blocks:
        name = f"{seg.block}/{seg.phase}"
        other = cuda.block_peak(seg.block, seg.phase)
        if other is None:
            missing.append(f"{name} only in dispatch")
            continue
        rel = _rel(other.tensor_peak_bytes - untracked, seg.tensor_peak_bytes)
        numbers["blocks"].append({"segment": name, "dispatch_peak_bytes": seg.tensor_peak_bytes,
                                  "allocated_peak_bytes": other.tensor_peak_bytes, "rel": rel})
        if abs(rel) >= abs(worst[0]):
            worst = (rel, name)
    missing += [f"{seg.block}/{seg.phase} only in cuda" for seg in cuda.blocks
                if dispatch.block_peak(seg.block, seg.phase) is None]
    numbers["worst_block"], numbers["worst_block_rel"] = worst[1], worst[0]
    if missing:
        checks.append(_check("blocks", worst[0], tol.blocks, ok=False,
                             detail="segments differ: " + ", ".join(missing)))
    else:
        checks.append(_check("blocks", worst[0], tol.blocks, detail=worst[1]))
    checks.append(_check("reserved_covers_allocated", numbers["reserved_over_allocated"], None,
                         ok=reserved >= c_peak))
    checks.append(_check("predict_vs_dispatch", numbers["predict_vs_dispatch"], tol.predict))
    return {"numbers": numbers, "checks": checks,
            "status": "ok" if all(c["ok"] for c in checks) else "fail"}


def check_case(case: TrainingCase, *, device: torch.device, tol: Tolerances,
               probes: Probes = PROBES) -> dict[str, Any]:
    """Measure one case with the three probes and :func:`evaluate` it.

    A probe that fails (a ConfigError from the fresh process, CUDA out of memory) makes the
    case's status ``error`` with its one-line message.
    """
    start = time.perf_counter()
    result: dict[str, Any] = {"case": case.key, "status": "error", "error": None,
                              "checks": [], "numbers": {}, "reports": {}}
    try:
        cuda_report = probes.cuda(case, device)  # first: the parent holds nothing yet
        dispatch_report = probes.dispatch(case, device)
        _release(device)
        predict_report = probes.predict(replace(case, foreach=True))
    except (ConfigError, RuntimeError) as err:
        result["error"] = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        _release(device)
    else:
        result.update(evaluate(dispatch_report, cuda_report, predict_report, tol))
        result["reports"] = {"dispatch": dispatch_report.to_dict(),
                             "cuda": cuda_report.to_dict(),
                             "predict": predict_report.to_dict()}
    result["wall_s"] = round(time.perf_counter() - start, 2)
    return result


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_checks(
    cases: Sequence[TrainingCase],
    *,
    device: torch.device,
    tol: Tolerances,
    budget_s: float,
    probes: Probes = PROBES,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict[str, Any]]:
    """:func:`check_case` for each case in order; cases not started within ``budget_s``
    seconds are ``skipped``."""
    start = clock()
    results: list[dict[str, Any]] = []
    for index, case in enumerate(cases, 1):
        elapsed = clock() - start
        if elapsed > budget_s:
            results.append({"case": case.key, "status": "skipped",
                            "error": f"not started: {elapsed:.0f} s > budget {budget_s:.0f} s",
                            "checks": [], "numbers": {}, "reports": {}, "wall_s": 0.0})
            continue
        result = check_case(case, device=device, tol=tol, probes=probes)
        results.append(result)
        if progress is not None:
            progress(f"{PROG}: [{index}/{len(cases)}] {case.key}: {result['status']} "
                     f"({result['wall_s']:.1f} s)")
    return results


# --- output -----------------------------------------------------------------------------------

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


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, probes: Probes = PROBES) -> int:
    """Run the checks; the exit code (0 ok, 1 a check failed, 2 bad arguments or no CUDA)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.out.is_dir():
            raise ConfigError(f"--out {str(args.out)!r} is a folder; give a file path")
        device = resolve_device(args.device)
        cases = ([parse_case_spec(spec, batch_size=args.batch_size) for spec in args.case]
                 if args.case else default_cases(args.batch_size))
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    message = no_cuda_message()
    if message is not None:
        print(message, file=sys.stderr)
        return 2
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        print(f"{PROG}: error: --device {args.device!r}: this machine has "
              f"{torch.cuda.device_count()} CUDA device(s)", file=sys.stderr)
        return 2
    tol = Tolerances(allocated=args.tolerance, blocks=args.block_tolerance,
                     predict=args.predict_tolerance)
    gpu = torch.cuda.get_device_name(device)
    print(f"{PROG}: {len(cases)} cases on {device} ({gpu}), batch {args.batch_size}, "
          f"budget {args.budget_s:.0f} s", file=sys.stderr)
    start = time.perf_counter()
    results = run_checks(cases, device=device, tol=tol, budget_s=args.budget_s, probes=probes,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    wall_s = time.perf_counter() - start
    payload = build_payload(results, device=str(device), gpu=gpu, batch_size=args.batch_size,
                            tol=tol, budget_s=args.budget_s, wall_s=wall_s,
                            provenance_info=provenance(CHECKOUT))
    write_json(args.out, payload)
    print(render_table(results))
    print(summary_line(results, args.out))
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
