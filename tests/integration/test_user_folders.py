"""User folders by flag (``--devices DIR``) and run folders under ``./results/runs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main

pytestmark = pytest.mark.integration

TRAIN = [
    "train", "--method", "fedavg", "--dataset", "synthetic", "--model", "cnn", "--width", "0.25",
    "--clients", "4", "--per-round", "2", "--rounds", "1", "--local-epochs", "1",
    "--samples-per-client", "16", "--test-samples", "32", "--partition", "iid",
]


def test_train_takes_the_fleet_and_profiles_of_a_devices_folder(
    user_devices: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert main([*TRAIN, "--devices", str(user_devices), "--fleet", "mine", "--out", str(out)]) == 0
    assert json.loads((out / "result.json").read_text())["extra"]["fleet"] == "mine"


def test_memory_participation_is_over_the_fleets_of_a_devices_folder(
    user_devices: Path, tmp_path: Path
) -> None:
    out = tmp_path / "memory"
    args = ["memory", "--model", "cnn", "--batch-size", "2", "--devices", str(user_devices),
            "--out", str(out)]
    assert main(args) == 0
    records = json.loads((out / "result.json").read_text())["records"]
    assert {r["metric"] for r in records if r["metric"].startswith("participation:")} == {
        "participation:mine"}


def test_a_run_without_out_goes_to_results_runs_of_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(TRAIN) == 0
    assert len(list(tmp_path.glob("results/runs/*/*_train-fedavg/result.json"))) == 1
