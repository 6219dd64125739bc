"""The cuda probe (one fresh process per case) and the dispatch probe on CUDA tensors.

Every test but the first needs a CUDA device and is skipped without one; the CPU-side wiring of
the fresh process is tested in tests/unit/memory/test_subprocess_probe.py.
"""

from __future__ import annotations

import pytest
import torch

from profl_core.errors import ConfigError
from profl_core.memory import case_from_text, measure

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_probe_without_cuda_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="cuda probe needs a CUDA device"):
        measure(case_from_text("cnn", "full", batch_size=2), probe="cuda")


@pytest.mark.gpu
@needs_cuda
def test_cuda_probe_peak_is_its_largest_segment_peak() -> None:
    report = measure(case_from_text("resnet18", "grow:2", batch_size=16), probe="cuda")
    assert max(b.tensor_peak_bytes for b in report.blocks) == report.required_bytes


@pytest.mark.gpu
@needs_cuda
def test_cuda_probe_reserved_covers_allocated() -> None:
    report = measure(case_from_text("resnet18", "grow:2", batch_size=16), probe="cuda")
    assert report.extra["reserved_peak_bytes"] >= report.extra["allocated_peak_bytes"]


@pytest.mark.gpu
@needs_cuda
def test_cuda_probe_is_not_moved_by_what_this_process_holds() -> None:
    case = case_from_text("cnn", "grow:2", batch_size=16)
    alone = measure(case, probe="cuda")
    held = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # 256 MiB in this process
    beside = measure(case, probe="cuda")
    del held
    assert beside.required_bytes == alone.required_bytes


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("text", ["grow:2", "shrink:2", "shrink:4"])
def test_cuda_probe_measures_profl_steps_with_output_modules(text: str) -> None:
    # Output modules of grow:t (t < T) and shrink:t once stayed on the CPU and crashed here.
    report = measure(case_from_text("resnet18", text, batch_size=8), probe="cuda")
    assert report.step_bytes > 0


@pytest.mark.gpu
@needs_cuda
def test_cuda_probe_device_is_indexed() -> None:
    report = measure(case_from_text("cnn", "full", batch_size=4), probe="cuda", device="cuda")
    assert report.device == f"cuda:{torch.cuda.current_device()}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("text", ["full", "grow:2"])
def test_dispatch_on_cuda_agrees_with_the_allocator_within_10_percent(text: str) -> None:
    case = case_from_text("resnet18", text, batch_size=16)
    tracked = measure(case, probe="dispatch", device="cuda")
    allocator = measure(case, probe="cuda")
    assert tracked.step_bytes == pytest.approx(allocator.step_bytes, rel=0.10)
