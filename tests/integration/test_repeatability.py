"""The same seed gives the same model: two separate ``python -m bench train`` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "train", "--method", "profl", "--dataset", "synthetic", "--width", "0.25",
    "--clients", "6", "--per-round", "2", "--rounds", "3", "--local-epochs", "1",
    "--batch-size", "16", "--samples-per-client", "32", "--test-samples", "64",
    "--partition", "iid", "--seed", "3", "--schedule", "fixed", "--checkpoint-every", "0",
]


def test_two_processes_with_one_seed_write_equal_weights(tmp_path: Path) -> None:
    """Both runs go at once, each in a fresh interpreter with one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-m", "bench", *TINY, "--out", str(out)],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    first, second = (torch.load(out / "model.pt", weights_only=True) for out in outs)
    assert first.keys() == second.keys()
    assert first
    for key in first:
        assert torch.equal(first[key], second[key]), f"{key} differs"
