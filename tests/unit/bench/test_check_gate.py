"""The CI memory gate: passes on the committed baseline, fails when a block keeps more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from bench.cli import main
from bench.commands.check import DEFAULT_BASELINE
from bench.gate import definition_hash, gate_key, torch_minor
from bench.suites import load_suite
from profl_core.models import BUILDERS, ModelSpec
from profl_core.models.cnn import CNN

SUITE = """
name = "gate-test"
[memory]
models = ["cnn"]
batch_size = 16
probe = "predict"
"""


class KeepsExtra(nn.Module):
    """Wraps a block and multiplies its output by a parameter: one more saved activation."""

    def __init__(self, block: nn.Module, channels: int) -> None:
        super().__init__()
        self.block = block
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) * self.scale


class LeakyCNN(CNN):
    """The cnn with block 2 keeping an extra activation for the backward pass."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.block2 = KeepsExtra(self.block2, self.stage_channels[1])


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "gate-test.toml"
    path.write_text(SUITE, encoding="utf-8")
    return path


def test_committed_baseline_covers_this_torch_version() -> None:
    data = json.loads(DEFAULT_BASELINE.read_text(encoding="utf-8"))
    cases = data["torch"][torch_minor()]["cases"]
    # 6 models x (full + shrink T..2 + grow 1..T) = 52, + 6 x (accum:4, ckpt, amp) = 18,
    # + every ProFL step with accum:4 (52 - 6 = 46), + the rivals: SLT's and NeuLite's T
    # stages each (2 x 26 blocks = 52) and FeDepth's T(T+1)/2 groups (4 models of 4 blocks,
    # vgg11 and vgg16 of 5: 4 x 10 + 2 x 15 = 70)
    assert len(cases) == 116 + 52 + 70


def test_committed_baseline_defines_every_case_as_the_shipped_suite_does() -> None:
    """Every memory-ci case is comparable: its stored definition hash is today's."""
    entry = json.loads(DEFAULT_BASELINE.read_text(encoding="utf-8"))["torch"][torch_minor()]
    section = load_suite("memory-ci").memory
    assert section is not None
    expected = {gate_key(c): definition_hash(c, section.probe) for c in section.cases()}
    assert entry["definitions"] == expected


def test_gate_passes_then_fails_on_an_extra_activation(
    suite_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    baseline = tmp_path / "baseline.json"
    args = ["check", "--suite", str(suite_file), "--baseline", str(baseline)]
    assert main([*args, "--update"]) == 0
    assert main(args) == 0
    capsys.readouterr()

    monkeypatch.setitem(BUILDERS, "cnn", LeakyCNN)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAIL: memory regression in" in out
    assert "cnn/full" in out
    assert "cnn/grow:2" in out
    assert "cnn/grow:1" not in out.split("FAIL")[1]  # block 1 alone does not change


def test_missing_baseline_version_is_exit_2(
    suite_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"schema_version": 1, "torch": {"0.1": {"cases": {}}}}))
    assert main(["check", "--suite", str(suite_file), "--baseline", str(baseline)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no baseline for torch" in err[0]
