"""All GPU checks of the memory probes in one run: ``profl gpu-check``.

``make gpu-check`` runs it (``GPU_CHECK_ARGS`` passes options; :mod:`bench.commands.gpu_check`
parses them).

For whenever a machine with a CUDA device is available; CI never needs it. For each case (by
default cnn, resnet18 and resnet34 at batch 64: ``full``, every ``grow:t`` and ``shrink:2``,
then vgg16 ``grow:5`` if the time budget allows) it measures the same client step three ways
(:mod:`bench.gpu_check_probes`):

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
``--out`` (:mod:`bench.gpu_check_output`) and exits 0 when every check is within its
tolerance, 1 when one is not or a case failed to measure, 2 on bad arguments (the CLI's one-line
``profl: error: ...``) or without a CUDA device (one line, nothing written). Cases not started
within ``--budget-s`` are listed as skipped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.gpu_check_output import build_payload, exit_code, render_table, summary_line, write_json
from bench.gpu_check_probes import PROBES, PROG, Probes, Tolerances, run_checks
from bench.paths import CHECKOUT, RESULTS_DIR
from profl_core.errors import ConfigError
from profl_core.memory import TrainingCase, case_from_text
from profl_core.memory.case import num_blocks
from profl_core.results import provenance

DEFAULT_OUT = RESULTS_DIR / "runs" / "gpu-check.json"
DEFAULT_MODELS: tuple[str, ...] = ("cnn", "resnet18", "resnet34")
EXTRA_CASES: tuple[str, ...] = ("vgg16:grow:5",)
DEFAULT_BATCH_SIZE = 64
DEFAULT_BUDGET_S = 270.0


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


def check_on_gpu(cases: Sequence[TrainingCase], *, device: torch.device, out: Path,
                 batch_size: int, tol: Tolerances, budget_s: float,
                 probes: Probes | None = None) -> int:
    """Check every case on ``device``, print the table and write ``out``; the exit code (0 ok,
    1 a check failed, 2 without a CUDA device: one line printed, nothing written).

    ``probes`` ``None`` is :data:`PROBES` (the real probes).

    Raises:
        ConfigError: ``device`` names a CUDA device this machine does not have.
    """
    message = no_cuda_message()
    if message is not None:
        print(message, file=sys.stderr)
        return 2
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {str(device)!r}: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    gpu = torch.cuda.get_device_name(device)
    print(f"{PROG}: {len(cases)} cases on {device} ({gpu}), batch {batch_size}, "
          f"budget {budget_s:.0f} s", file=sys.stderr)
    start = time.perf_counter()
    results = run_checks(cases, device=device, tol=tol, budget_s=budget_s,
                         probes=PROBES if probes is None else probes,
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
    wall_s = time.perf_counter() - start
    payload = build_payload(results, device=str(device), gpu=gpu, batch_size=batch_size,
                            tol=tol, budget_s=budget_s, wall_s=wall_s,
                            provenance_info=provenance(CHECKOUT))
    write_json(out, payload)
    print(render_table(results))
    print(summary_line(results, out))
    return exit_code(results)
