"""Suite runs and ``profl train`` around run_training: diverged runs, progress lines, errors
(run_training itself replaced by a fake that returns a result file)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import bench.commands.train
import bench.runner
from bench.cli import main
from bench.run_files import run_record
from bench.run_settings import TrainingConfig
from bench.suites import AccuracySection
from profl_core.results import Record, ResultFile


def _result(key: str, *, diverged: str | None = None) -> ResultFile:
    records = () if diverged else (
        Record(key=key, metric="final_accuracy", value=0.741, unit="ratio"),)
    extra: dict[str, Any] = {"status": "completed" if diverged is None else "diverged"}
    if diverged is not None:
        extra["diverged"] = {"message": diverged}
    return ResultFile(suite="s", records=records, extra=extra)


def _record(rnd: int, step_end: str | None) -> SimpleNamespace:
    return SimpleNamespace(round=rnd, accuracy=0.5, stage="grow", step=2, submodel="grow:2",
                           participants=[1, 2], step_end=step_end)


def test_a_diverged_run_is_logged_and_the_suite_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = AccuracySection(base=TrainingConfig(dataset="synthetic", rounds=2),
                              methods=("profl", "fedavg"), partitions=("iid",), seeds=(0, 1),
                              workers=1)
    calls: list[tuple[str, str, int]] = []

    def fake(config: TrainingConfig, out: Path, **kwargs: Any) -> ResultFile:
        calls.append((config.label, config.partition, config.seed))
        for rnd in (1, 2):
            kwargs["progress"](_record(rnd, None))
        if (config.label, config.seed) == ("profl", 0):
            return _result(out.name, diverged="round 2 (grow:2): non-finite update")
        return _result(out.name)

    monkeypatch.setattr(bench.runner, "run_training", fake)
    monkeypatch.setattr(bench.runner, "load_data", lambda config: (None, None))
    lines: list[str] = []
    bench.runner.run_accuracy(section, tmp_path, resume=False, suite="s", log=lines.append)
    assert calls == [("profl", "iid", 0), ("fedavg", "iid", 0), ("profl", "iid", 1),
                     ("fedavg", "iid", 1)]
    assert lines[0] == "  profl-iid-s0 (1/4): diverged: round 2 (grow:2): non-finite update"
    assert lines[1].startswith("  fedavg-iid-s0 (2/4): final accuracy 74.1% (")
    assert len(lines) == 4


def test_resume_skips_finished_runs_and_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    section = AccuracySection(base=TrainingConfig(dataset="synthetic", rounds=2),
                              methods=("profl", "fedavg"), partitions=("iid",), workers=2)
    finished = tmp_path / "runs" / "profl-iid-s0"
    finished.mkdir(parents=True)
    (finished / "run.json").write_text(json.dumps(run_record(section.config("profl", "iid", 0))))
    (finished / "result.json").write_text("{}")
    seen: list[tuple[str, bool]] = []

    def fake(config: TrainingConfig, out: Path, **kwargs: Any) -> ResultFile:
        seen.append((out.name, kwargs["resume"]))
        return _result(out.name)

    monkeypatch.setattr(bench.runner, "run_training", fake)
    monkeypatch.setattr(bench.runner, "load_data", lambda config: (None, None))
    lines: list[str] = []
    bench.runner.run_accuracy(section, tmp_path, resume=True, suite="s", log=lines.append,
                              backend="ray")  # a non-local backend runs in this process
    assert seen == [("fedavg-iid-s0", True)]
    assert lines[0] == "accuracy: 1 of 2 runs already finished"
    assert lines[-1].startswith("  fedavg-iid-s0 (2/2): final accuracy")


TINY = ["train", "--dataset", "synthetic", "--width", "0.25", "--clients", "4", "--per-round",
        "2", "--rounds", "3", "--partition", "iid"]


def test_train_prints_a_diverged_run_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake(config: TrainingConfig, out: Path, **kwargs: Any) -> ResultFile:
        kwargs["progress"](_record(1, None))
        kwargs["progress"](_record(2, "em"))
        return _result("k", diverged="round 3 (grow:3): non-finite loss")

    monkeypatch.setattr(bench.commands.train, "run_training", fake)
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == \
        "profl train: round 3 (grow:3): non-finite loss"
    assert "round 2: grow step 2 (grow:2) ended: em" in captured.out
    assert "round 1: grow" not in captured.out


def test_train_completed_run_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.commands.train, "run_training",
                        lambda config, out, **kwargs: _result("k"))
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 0


def test_a_finished_run_reports_its_smoothed_final_when_it_has_one() -> None:
    """The progress line's final accuracy is the table's ``final_%``: the smoothed final
    (0.70) over the last evaluation (0.741); a result file without it gives the last."""
    smoothed = Record(key="k", metric="smoothed_final_accuracy", value=0.70, unit="ratio")
    old = _result("k")
    new = ResultFile(suite="s", records=(*old.records, smoothed), extra=old.extra)
    assert bench.runner._outcome("k", new, 1.0).final_accuracy == 0.70
    assert bench.runner._outcome("k", old, 1.0).final_accuracy == 0.741
