"""``kill -9`` at a random round, ``--resume``: the same weights as an uninterrupted run.

The rounds to kill at come from a seeded ``random.Random`` (the same in every CI run); the
moment within the round is a random delay after the round's record appeared, so the kill can
land in training, in a retried attempt, while ``rounds.jsonl`` or ``checkpoint.pt`` is being
written. The oracle is an uninterrupted run in this process (``torch.equal`` per tensor).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import kill_driver
import pytest
import torch

from bench.cli import main
from profl_core.fl import RoundFailedError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAULTS = {3: "raise"}  # client 3 always fails: rounds that select it retry with a new draw
EVERY_CLIENT_FAILS = {1: "raise", 2: "raise", 3: "raise"}


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_after(command: list[str], rounds: Path, records: int, delay_s: float) -> None:
    """Start ``command``; once ``rounds`` holds ``records`` lines wait ``delay_s`` and
    SIGKILL it. The process must still have been running (killed, not finished)."""
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _lines(rounds) < records and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()


def driver(out: Path, faults: dict[int, str]) -> list[str]:
    return [sys.executable, str(HERE / "kill_driver.py"), str(out), json.dumps(faults)]


def _records(path: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]



@pytest.mark.usefixtures("one_thread")
def test_kill_minus_9_twice_and_a_failed_round_between_resume_exactly(tmp_path: Path) -> None:
    """Kill at a random round, resume into a round that fails (every client raises), kill
    again later, resume: the final weights and records equal an uninterrupted run's."""
    reference = kill_driver.run(tmp_path / "reference", FAULTS)
    draw = random.Random(12)
    first = draw.randint(1, 4)
    second = draw.randint(first + 2, kill_driver.ROUNDS - 2)
    out = tmp_path / "killed"
    rounds = out / "rounds.jsonl"

    kill_after(driver(out, FAULTS), rounds, first, draw.uniform(0.0, 0.15))
    with pytest.raises(RoundFailedError):
        kill_driver.run(out, EVERY_CLIENT_FAILS)
    kept = rounds.read_text(encoding="utf-8")
    at = torch.load(out / "checkpoint.pt", weights_only=True)["round"]
    kill_after(driver(out, FAULTS), rounds, second, draw.uniform(0.0, 0.15))
    final = kill_driver.run(out, FAULTS)

    assert kept.count("\n") == at  # the failed round left the records of its checkpoint
    assert final.keys() == reference.keys()
    for key in reference:
        assert torch.equal(final[key], reference[key]), f"{key} differs"
    assert _records(rounds) == _records(tmp_path / "reference" / "rounds.jsonl")


TRAIN = ["train", "--method", "fedavg", "--dataset", "synthetic", "--width", "0.25",
         "--clients", "6", "--per-round", "3", "--rounds", "10", "--local-epochs", "2",
         "--partition", "iid", "--samples-per-client", "48", "--test-samples", "64",
         "--checkpoint-every", "1", "--seed", "4"]


@pytest.mark.usefixtures("one_thread")
def test_profl_train_killed_at_a_random_round_resumes_to_the_same_model(tmp_path: Path) -> None:
    """``python -m bench train`` killed with SIGKILL at a random round; ``--resume`` ends with
    model.pt equal to an uninterrupted run's."""
    assert main([*TRAIN, "--out", str(tmp_path / "reference")]) == 0
    reference = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)
    draw = random.Random(7)
    out = tmp_path / "killed"
    kill_after([sys.executable, "-m", "bench", *TRAIN, "--out", str(out)],
               out / "rounds.jsonl", draw.randint(1, 8), draw.uniform(0.0, 0.05))
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    resumed = torch.load(out / "model.pt", weights_only=True)
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), f"{key} differs"
