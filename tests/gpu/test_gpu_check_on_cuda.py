"""``profl gpu-check`` on a real CUDA device (small cases); skipped without one. The full check
is ``make gpu-check``; its CPU side is tested in tests/unit/bench/test_gpu_check.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.cli import main

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_gpu_check_on_two_small_cases(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    code = main(["gpu-check", "--case", "cnn:grow:2", "--case", "resnet18:shrink:2",
                 "--batch-size", "16", "--out", str(out)])
    data = json.loads(out.read_text())
    assert [c["status"] for c in data["cases"]] == ["ok", "ok"]
    assert code == 0
