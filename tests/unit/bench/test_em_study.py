"""The EM study (bench/em_study.py): replaying a freeze rule on recorded rows gives the round
ProFL itself ends the step at, and a study run records every round of every step."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.em_study import TRAJECTORIES, read_study, replay, run_study, study_config
from bench.run_settings import TrainingConfig
from bench.training import run_training
from profl_core.fl import RoundRecord
from profl_core.methods.effective_movement import FreezeRule

RULE = {"em_window": 2, "em_evaluation_number": 2, "em_slope_threshold": 0.5, "em_level": 1.0}


def test_a_straight_line_is_never_frozen() -> None:
    line = np.outer(np.arange(31, dtype=float), np.ones(50))  # EM = 1 after every round
    assert replay(FreezeRule(window=4, evaluation_number=8, em_level=0.75), line) is None


def test_an_oscillation_is_frozen_at_the_rule_s_earliest_round() -> None:
    wave = np.outer((-1.0) ** np.arange(31), np.ones(50))  # EM = 0 over even windows
    rule = FreezeRule(window=4, evaluation_number=8, em_level=0.75)
    assert replay(rule, wave) == 4 + 8 - 1


def _base() -> TrainingConfig:
    return TrainingConfig(method="profl", dataset="synthetic", width=0.25, clients=10,
                          per_round=3, rounds=120, local_epochs=1, eval_every=1,
                          samples_per_client=32, test_samples=64, options=RULE)


def test_a_study_run_records_every_round_of_every_step(tmp_path: Path) -> None:
    run_study(study_config(_base(), 5), tmp_path / "s", phases=2)
    with np.load(tmp_path / "s" / TRAJECTORIES) as data:
        assert sorted(data) == ["phase0", "phase1"]
        assert data["phase0"].shape[0] == 6
        assert data["phase1"].shape[0] == 6
    rounds = (tmp_path / "s" / "rounds.jsonl").read_text().splitlines()
    assert len(rounds) == 10
    assert all(json.loads(line)["accuracy"] is not None for line in rounds)


def test_replay_ends_the_first_step_where_profl_ends_it(tmp_path: Path) -> None:
    """The same seed trained with the EM schedule ends its first step at the round the rule
    replayed on the fixed-schedule recording says (client draws do not depend on EM)."""
    run_study(study_config(_base(), 12), tmp_path / "s", phases=1)
    step = read_study(tmp_path / "s")[0]
    rule = FreezeRule(window=2, evaluation_number=2, slope_threshold=0.5, em_level=1.0)
    expected = replay(rule, step.rows)
    ends: list[tuple[int, str]] = []

    def stop_at_first_end(record: RoundRecord) -> None:
        if record.step_end is not None:
            ends.append((record.round, record.step_end))
            raise FirstStepOver

    with pytest.raises(FirstStepOver):
        run_training(replace(_base(), options={**RULE, "max_rounds": 12}), tmp_path / "em",
                     progress=stop_at_first_end)
    assert expected is not None
    assert ends == [(expected, "em")]


class FirstStepOver(Exception):
    """Stops a run after its first step."""
