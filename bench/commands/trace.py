"""``profl trace``: one training case's per-block memory table, its peak and the breakdown."""

from __future__ import annotations

import argparse
import json

from bench.model_options import MODEL_HELP, add_spec_arguments, spec_overrides
from bench.trace_text import render
from profl_core.memory import PROBES, case_from_text, measure
from profl_core.models import native_spec

NAME = "trace"
HELP = "print one case's per-block peak memory (forward/backward), its peak and breakdown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    add_spec_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--case", default="full",
                        help="full, grow:T, shrink:T, depth:K or trunc:K, then optional "
                             "+accum:k, +ckpt, +amp (bf16) or +amp:fp16, e.g. grow:2+accum:4")
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


def run(args: argparse.Namespace) -> int:
    spec = native_spec(args.model, width=args.width, **spec_overrides(args))
    case = case_from_text(spec, args.case, batch_size=args.batch_size, optimizer=args.optimizer,
                          foreach=args.foreach)
    report = measure(case, probe=args.probe, device=args.device, threads=args.threads)
    if args.json:  # the report, plus the number selection uses
        print(json.dumps({**report.to_dict(), "required_bytes": report.required_bytes},
                         sort_keys=True))
    else:
        print(render(report))
    return 0
