"""``run.json``, the resume contract's record, and the suite's saved memory cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.memory_measure import read_case_report
from bench.run_files import check_resume, run_record
from bench.run_settings import TrainingConfig
from profl_core.errors import ConfigError
from profl_core.memory import TrainingCase, measure
from profl_core.models import native_spec

CONFIG = TrainingConfig(method="fedavg", dataset="synthetic", clients=4, per_round=2, rounds=3)


def test_another_code_version_is_one_warning_not_a_refusal(tmp_path: Path) -> None:
    record = run_record(CONFIG)
    record["code"]["git_sha"] = "0" * 40
    (tmp_path / "run.json").write_text(json.dumps(record))
    warnings: list[str] = []
    assert check_resume(CONFIG, tmp_path, warn=warnings.append)
    assert len(warnings) == 1
    assert f"started with git_sha {'0' * 40}" in warnings[0]


def test_the_same_settings_resume_without_a_warning(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(run_record(CONFIG)))
    warnings: list[str] = []
    assert check_resume(CONFIG, tmp_path, warn=warnings.append)
    assert warnings == []


def test_a_run_folder_without_run_json_is_refused(tmp_path: Path) -> None:
    """Started by an older version: its settings are unknown, so it cannot be continued."""
    (tmp_path / "rounds.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"holds rounds\.jsonl but no run\.json"):
        check_resume(CONFIG, tmp_path)


def test_an_empty_folder_starts_fresh_unless_a_resume_was_asked_for(tmp_path: Path) -> None:
    """A suite's run that never started begins; ``profl train --resume`` needs a run."""
    assert not check_resume(CONFIG, tmp_path)
    with pytest.raises(ConfigError, match="nothing to resume"):
        check_resume(CONFIG, tmp_path, required=True)


def test_a_saved_case_of_another_probe_is_refused(tmp_path: Path) -> None:
    """A suite resumed with probe = "dispatch" after "predict" does not reuse the reports."""
    case = TrainingCase(model=native_spec("cnn", width=0.25), kind="full", batch_size=2)
    path = tmp_path / "case.json"
    path.write_text(measure(case, probe="predict").to_json())
    with pytest.raises(ConfigError, match=r"by the 'predict' probe, not of .* by dispatch"):
        read_case_report(path, case, "dispatch")
