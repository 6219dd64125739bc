"""The cuda probe and the dispatch probe on CUDA tensors; skipped without a GPU."""

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
def test_cuda_probe_reports_segments_and_reserved_bytes() -> None:
    report = measure(case_from_text("resnet18", "grow:2", batch_size=16), probe="cuda")
    top = max(b.peak_bytes for b in report.blocks)
    assert (top, report.extra["reserved_peak_bytes"] >= report.peak_bytes) == (
        report.peak_bytes, True
    )


def _warm_cuda() -> None:
    """Allocate the cuBLAS/cuDNN workspaces once so they are not charged to the step."""
    layer = torch.nn.Conv2d(3, 8, 3).cuda()
    layer(torch.randn(2, 3, 8, 8, device="cuda")).sum().backward()
    torch.nn.Linear(8, 8).cuda()(torch.randn(2, 8, device="cuda")).sum().backward()
    torch.cuda.synchronize()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("text", ["full", "grow:2"])
def test_dispatch_on_cuda_agrees_with_the_allocator_within_10_percent(text: str) -> None:
    _warm_cuda()
    case = case_from_text("resnet18", text, batch_size=16)
    tracked = measure(case, probe="dispatch", device="cuda")
    allocator = measure(case, probe="cuda")
    assert tracked.step_bytes == pytest.approx(allocator.step_bytes, rel=0.10)
