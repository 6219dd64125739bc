"""The ``rss`` probe: what the operating system sees, in fresh processes.

Two fresh Python processes are started (:func:`~profl_core.memory.subprocess_probe.run_fresh`:
this interpreter, the case in as JSON on stdin, the result back as JSON on stdout):

* *train*: builds the step, runs the warm-up step, then samples its own resident set size with
  ``memory_profiler.memory_usage`` every few milliseconds while the measured step runs and
  reports the highest sample;
* *built*: builds the same model, optimizer and batch without training and reports its RSS.

The report's ``tensor_peak_bytes`` is the difference (train peak minus built), i.e. what
training adds over holding the model (the field's name is shared with the tensor probes; RSS
cannot tell storages from anything else); ``heap_peak_bytes`` is ``None``, ``before_step_bytes``
is 0, both raw values are in ``extra``.

Known limitations: RSS is sampled, so short peaks can be missed; allocators reuse pages freed
after the warm-up step, and pages of library code and allocator caches differ between the two
processes, so the number is noisy (several MiB) and can under-read the tensor peak. Never use
it for the CI gate; there is no per-block breakdown (``blocks`` is empty).
"""

from __future__ import annotations

import json
from typing import Any

from profl_core.memory.case import TrainingCase
from profl_core.memory.report import MemoryReport
from profl_core.memory.subprocess_probe import run_fresh

MIB = 1 << 20
SAMPLE_INTERVAL_S = 0.002

_CHILD = """
import gc, json, sys
import torch
from memory_profiler import memory_usage
from profl_core.memory.case import TrainingCase
from profl_core.memory.step import build_step
from profl_core.methods.registry import load_plugins
load_plugins()  # a plugin method's memory kinds
request = json.loads(sys.stdin.read())
torch.set_num_threads(request["threads"])
case = TrainingCase.from_params(request["case"])
prepared = build_step(case, device="cpu")
if request["mode"] == "train":
    prepared.run()
    gc.collect()
    peak = memory_usage((prepared.run, (), {}), interval=request["interval"], max_usage=True)
else:
    gc.collect()
    peak = memory_usage(-1, interval=request["interval"], timeout=0.1, max_usage=True)
print(json.dumps({"rss_mib": float(peak)}))
"""


def _run_child(case: TrainingCase, mode: str, *, threads: int, timeout_s: float) -> int:
    request = {"case": case.params(), "mode": mode, "threads": threads,
               "interval": SAMPLE_INTERVAL_S}
    answer = run_fresh(_CHILD, request, what=f"rss probe: the {mode} process for {case.key}",
                       timeout_s=timeout_s)
    data: dict[str, Any] = json.loads(answer)
    return int(float(data["rss_mib"]) * MIB)


def measure(case: TrainingCase, *, threads: int = 1, timeout_s: float = 600.0) -> MemoryReport:
    """Measure the RSS delta of the second training step of ``case`` on the CPU.

    Args:
        case: what to train.
        threads: ``torch.set_num_threads`` in both processes.
        timeout_s: give up on a process after this many seconds.
    """
    trained = _run_child(case, "train", threads=threads, timeout_s=timeout_s)
    built = _run_child(case, "built", threads=threads, timeout_s=timeout_s)
    return MemoryReport(
        probe="rss",
        device="cpu",
        case_key=case.key,
        before_step_bytes=0,
        tensor_peak_bytes=max(0, trained - built),
        peak_breakdown={},
        peak_at=None,
        blocks=(),
        extra={"rss_peak_bytes": trained, "rss_built_bytes": built},
    )
