"""``profl train`` and ``profl bench`` read every file they are given before loading the data:
a bad partition plan, fleet file, devices folder or suite file is reported (exit 2, one line
naming the file) on a machine without the dataset too, not hidden behind a missing dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.run_settings import TrainingConfig
from bench.training import load_data
from profl_core.errors import ConfigError

#: A run small enough to start at once; the dataset is the default, Fashion-MNIST.
TRAIN = ["train", "--model", "cnn", "--clients", "4", "--per-round", "2", "--rounds", "1"]
SUITE = """
[accuracy]
methods = ["profl"]
partitions = ["iid"]
clients = 4
per_round = 2
rounds = 1
"""


@pytest.fixture
def no_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data folder, the only place the data is looked for (as on a fresh machine)."""
    empty = tmp_path / "data-dir"
    empty.mkdir()
    monkeypatch.delenv("PROFL_DATA_DIR", raising=False)
    monkeypatch.setattr("bench.paths.DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-system-data")
    monkeypatch.chdir(tmp_path)  # nor ./data
    with pytest.raises(ConfigError, match="fashion-mnist"):
        load_data(TrainingConfig(data_dir=empty))
    return empty


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Bad files by the setting that names them: (the file, its content)."""
    return {
        "partition_plan": (tmp_path / "plan.json", "{"),
        "fleet": (tmp_path / "fleet.toml", "[fleet"),
    }


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "dataset-fashion-mnist" not in err  # the data was not looked for
    return err


@pytest.mark.parametrize("setting", ["partition_plan", "fleet"])
def test_train_reports_a_bad_file_before_loading_the_data(
    setting: str, tmp_path: Path, no_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, text = _bad_inputs(tmp_path)[setting]
    path.write_text(text)
    flag = "--" + setting.replace("_", "-")
    code = main([*TRAIN, flag, str(path), "--data-dir", str(no_data),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert str(path) in _error(capsys)
    assert not (tmp_path / "run").exists()


def test_train_reports_a_bad_devices_folder_before_loading_the_data(
    tmp_path: Path, no_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    code = main([*TRAIN, "--devices", str(devices), "--data-dir", str(no_data),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert str(devices) in _error(capsys)


@pytest.mark.parametrize("setting", ["partition_plan", "fleet"])
def test_bench_reports_a_bad_file_of_a_run_before_loading_the_data(
    setting: str, tmp_path: Path, no_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, text = _bad_inputs(tmp_path)[setting]
    path.write_text(text)
    suite = tmp_path / "mine.toml"
    suite.write_text(f"{SUITE}{setting} = {str(path)!r}\n")
    code = main(["bench", str(suite), "--data-dir", str(no_data), "--out", str(tmp_path / "run")])
    assert code == 2
    err = _error(capsys)
    assert str(path) in err
    assert "run profl-iid-s0" in err


def test_bench_reports_a_bad_suite_file_before_loading_the_data(
    tmp_path: Path, no_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "mine.toml"
    suite.write_text("[accuracy\n")
    code = main(["bench", str(suite), "--data-dir", str(no_data), "--out", str(tmp_path / "run")])
    assert code == 2
    assert str(suite) in _error(capsys)
