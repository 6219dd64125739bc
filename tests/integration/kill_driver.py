"""A tiny ProFL run for the kill test, in its own process: ``python kill_driver.py OUT FAULTS``.

Runs (or, when ``OUT`` holds a checkpoint, resumes) :func:`run_federated` on the tiny setup of
``tiny_fl`` with a checkpoint every round into ``OUT``, client faults ``FAULTS`` (JSON, client
id -> fault) and ``min_survivors = 2``, and saves the final weights to ``OUT/final.pt``. Exit
code 1 with one stderr line when a round fails (:class:`RoundFailedError`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tiny_fl import FLEET, TABLE, tiny_data, tiny_model

from profl_core.fl import JsonlSink, RoundFailedError, RunConfig, run_federated
from profl_core.methods.profl import ProFL, ProFLConfig

ROUNDS = 10


def method() -> ProFL:
    """ProFL with one round per step (10 rounds, 10 steps)."""
    return ProFL(ProFLConfig(rounds=ROUNDS, per_round=2, local_epochs=2, batch_size=16,
                             lr=0.05, distill_lr=0.05, schedule="fixed"))


def run(out: Path, faults: dict[int, str]) -> dict[str, torch.Tensor]:
    """The run's final weights; resumes from ``out`` when it holds a checkpoint."""
    config = RunConfig(rounds=ROUNDS, seed=5, checkpoint_every=1, min_survivors=2,
                       round_retries=8, faults=faults)  # type: ignore[arg-type]
    state = run_federated(method(), FLEET, tiny_data(), config, model=tiny_model(),
                          memory_table=TABLE, sink=JsonlSink(out / "rounds.jsonl"),
                          checkpoint_dir=out, resume=True)
    return state.weights


def main() -> int:
    out, faults = Path(sys.argv[1]), {int(k): v for k, v in json.loads(sys.argv[2]).items()}
    torch.set_num_threads(1)
    try:
        weights = run(out, faults)
    except RoundFailedError as err:
        print(f"round failed: {str(err)[:200]}", file=sys.stderr)
        return 1
    torch.save(weights, out / "final.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
