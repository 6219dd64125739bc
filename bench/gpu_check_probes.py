"""Measuring one case of ``profl gpu-check`` three ways and comparing the reports.

The same client step is measured with ``dispatch`` on the CUDA device, ``cuda`` in a fresh
process and ``predict`` with the CUDA optimizer modelled (:class:`Probes`; tests pass
stand-ins); :func:`evaluate` compares the three reports against :class:`Tolerances` (checks (a)
to (d) of :mod:`bench.gpu_check`) and :func:`run_checks` does so for every case within a time
budget.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from profl_core.errors import ConfigError
from profl_core.memory import MemoryReport, TrainingCase, measure

#: The name in front of every line the GPU check prints and in its JSON file.
PROG = "gpu-check"


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
    untracked = cuda.before_step_bytes - dispatch.before_step_bytes
    # Tensor figures throughout: the predicted heap is a CPU-allocator figure.
    d_peak, c_peak = dispatch.tensor_peak_bytes, cuda.tensor_peak_bytes
    p_peak = predict.tensor_peak_bytes
    reserved = int(cuda.extra.get("reserved_peak_bytes", 0))
    numbers: dict[str, Any] = {
        "dispatch_peak_bytes": d_peak,
        "dispatch_baseline_bytes": dispatch.before_step_bytes,
        "allocated_peak_bytes": c_peak,
        "allocated_baseline_bytes": cuda.before_step_bytes,
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

