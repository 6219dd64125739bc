"""``profl trace``'s text names the memory held before the step in words that cannot be taken
for the gate's baseline (a committed file of numbers)."""

from __future__ import annotations

import json

import pytest

from bench.cli import main

ARGS = ["trace", "--model", "cnn", "--width", "0.25", "--case", "grow:2", "--batch-size", "8"]


def test_trace_prints_the_bytes_held_before_the_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*ARGS, "--json"]) == 0
    held = json.loads(capsys.readouterr().out)["before_step_bytes"]
    assert main(ARGS) == 0
    text = capsys.readouterr().out
    assert f"held before the step {held / 2**20:.2f} MiB" in text
    assert "baseline" not in text
