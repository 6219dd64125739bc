"""The tensor and heap probes against memray's heap high-water mark in a fresh process.

memray counts every malloc made inside its ``Tracker`` block around the measured (second)
step: tensor storages (the CPU allocator is malloc-based) *and* what kernels allocate for
themselves (oneDNN convolution scratch and reorders, batch-norm backward buffers), plus Python
objects. So memray's peak is a *heap* figure:

* the ``heap`` probe's ``heap_step_bytes`` (c10 allocator events, heap peak minus the bytes
  live before the step) is the same quantity and must agree within 3 %, also at the
  conv-heavy batch-64 peaks where scratch is 5-40 % of the step;
* the ``dispatch`` probe's ``step_bytes`` is the *tensor* peak over the same baseline: it
  misses the scratch, so memray may read higher, never lower. At batch 4 the scratch of
  ResNet18 and the ViT is under 3 % of the step (checked within 3 %); for the small ``cnn``
  (28x28, few channels) oneDNN's scratch is a larger share (~5-15 %), so there the check is
  the one-sided bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("memray")

from profl_core.memory import case_from_text, heap
from profl_core.memory.dispatch import measure
from profl_core.models import native_spec

CHILD = """
import gc, json, sys
import memray, torch
from profl_core.memory.case import TrainingCase
from profl_core.memory.step import build_step
torch.set_num_threads(1)
out = {}
for key, (params, path) in json.loads(sys.stdin.read()).items():
    prepared = build_step(TrainingCase.from_params(params))
    prepared.run()
    gc.collect()
    with memray.Tracker(path, native_traces=False, follow_fork=False):
        prepared.run()
    out[key] = memray.FileReader(path).metadata.peak_memory
    del prepared
    gc.collect()
print(json.dumps(out))
"""

CASES = {
    "resnet18/full": ("resnet18", "full", 4),
    "resnet18/grow:3": ("resnet18", "grow:3", 4),
    "vit/grow:2": ("vit", "grow:2", 4),
    "cnn/full": ("cnn", "full", 8),
    "resnet18/grow:2/bs64": ("resnet18", "grow:2", 64),
    "vgg11/grow:2/bs32": ("vgg11", "grow:2", 32),
}
HEAP_CASES = ["resnet18/grow:2/bs64", "vgg11/grow:2/bs32"]


@pytest.fixture(scope="module")
def memray_peaks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    folder: Path = tmp_path_factory.mktemp("memray")
    request = {
        key: (case_from_text(m, text, batch_size=b).params(), str(folder / f"{i}.bin"))
        for i, (key, (m, text, b)) in enumerate(CASES.items())
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD], input=json.dumps(request), capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peaks: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


def step_bytes(key: str) -> int:
    model, text, batch = CASES[key]
    return measure(case_from_text(native_spec(model), text, batch_size=batch)).step_bytes


@pytest.mark.parametrize("key", ["resnet18/full", "resnet18/grow:3", "vit/grow:2"])
def test_dispatch_step_peak_agrees_with_memray_within_3_percent(
    key: str, memray_peaks: dict[str, int]
) -> None:
    assert step_bytes(key) == pytest.approx(memray_peaks[key], rel=0.03)


def test_memray_never_reads_below_dispatch_on_cnn(memray_peaks: dict[str, int]) -> None:
    tracked = step_bytes("cnn/full")
    assert tracked <= memray_peaks["cnn/full"] <= 1.15 * tracked


@pytest.mark.parametrize("key", HEAP_CASES)
def test_heap_probe_step_peak_agrees_with_memray_within_3_percent(
    key: str, memray_peaks: dict[str, int]
) -> None:
    model, text, batch = CASES[key]
    report = heap.measure(case_from_text(native_spec(model), text, batch_size=batch), threads=1)
    assert report.heap_step_bytes == pytest.approx(memray_peaks[key], rel=0.03)
