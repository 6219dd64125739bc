"""A ProFL training run draws its effective movement per step (``effective_movement.png``),
at the level of its EM rule; a tiny run on the built-in synthetic data."""

from __future__ import annotations

from pathlib import Path

from bench.run_settings import TrainingConfig
from bench.training import em_level, run_training
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.profl import ProFL, ProFLConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_profl_run_writes_its_em_figure(tmp_path: Path) -> None:
    """Four rounds, one per step (``metrics.em`` null in each: no full window yet)."""
    config = TrainingConfig(method="profl", dataset="synthetic", width=0.25, clients=10,
                            per_round=2, rounds=4, eval_every=4)
    run_training(config, tmp_path / "run")
    assert (tmp_path / "run" / "effective_movement.png").read_bytes()[:8] == PNG_MAGIC


def test_the_level_is_the_em_rule_s() -> None:
    assert em_level(ProFL(ProFLConfig(rounds=10, em_level=0.42))) == 0.42


def test_the_fixed_schedule_has_no_level() -> None:
    assert em_level(ProFL(ProFLConfig(rounds=10, schedule="fixed"))) is None


def test_a_method_without_em_has_no_level() -> None:
    assert em_level(FedAvg(FedAvgConfig(rounds=10))) is None
