"""Bad input and broken runs through ``profl``: one line, exit 2, nothing written (issue 12).

Resume is a contract (a changed setting is refused, naming it; a folder with nothing to
resume is refused; a torn last line is dropped with a warning) and everything that can be
checked before work is (``--out``, the device, the Ray address, the baseline, the folder
``profl report`` is given). Every refusal leaves the folder byte-identical.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import bench.gate
from bench.cli import main
from bench.run_files import run_record
from bench.run_settings import TrainingConfig
from bench.runner import accuracy_jobs
from bench.suites import AccuracySection
from profl_core.errors import ConfigError
from profl_core.fl import JsonlSink

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = ["train", "--method", "fedavg", "--dataset", "synthetic", "--width", "0.25",
        "--clients", "4", "--per-round", "2", "--rounds", "3", "--partition", "iid",
        "--samples-per-client", "16", "--test-samples", "32", "--local-epochs", "1",
        "--checkpoint-every", "1"]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``profl ARGS``; it must exit 2 with one ``profl: error:`` line, returned."""
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("profl: error: ")
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished seed-0 run of TINY."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


@pytest.mark.parametrize(("change", "named"), [
    (["--seed", "1"], "seed 0 -> 1"),
    (["--clients", "8", "--rounds", "5"], "clients 4 -> 8; rounds 3 -> 5"),
    (["--width", "0.5"], "width 0.25 -> 0.5"),
])
def test_resume_with_changed_settings_is_refused_and_changes_nothing(
    run_copy: Path, change: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished or unfinished run resumed with another seed, size or width."""
    before = _hashes(run_copy)
    line = refused([*TINY, *change, "--out", str(run_copy), "--resume"], capsys)
    assert f"--resume would change {named}" in line
    assert _hashes(run_copy) == before


def test_resume_may_change_where_clients_run_and_how_often_it_checkpoints(
    run_copy: Path, finished: Path
) -> None:
    """Settings that do not change the result: the run resumes (it is finished: same model)."""
    args = [*TINY, "--checkpoint-every", "2", "--out", str(run_copy), "--resume"]
    assert main(args) == 0
    model = torch.load(run_copy / "model.pt", weights_only=True)
    reference = torch.load(finished / "model.pt", weights_only=True)
    assert all(torch.equal(model[k], reference[k]) for k in reference)


@pytest.mark.parametrize("empty", [True, False])
def test_resume_with_nothing_to_resume_is_refused(
    tmp_path: Path, empty: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty folder, or one that does not exist (and is not created)."""
    out = tmp_path / "run"
    if empty:
        out.mkdir()
    line = refused([*TINY, "--out", str(out), "--resume"], capsys)
    assert "nothing to resume" in line
    assert out.exists() == empty


def test_a_torn_last_line_is_dropped_with_one_warning_and_the_run_resumes_exactly(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed while writing round 3's record: checkpoint at round 2, half a line after it."""
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(finished / "run.json", out)
    lines = (finished / "rounds.jsonl").read_text().splitlines()
    (out / "rounds.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:40])
    _checkpoint_at(out, finished, 2)
    capsys.readouterr()
    assert main([*TINY, "--out", str(out), "--resume"]) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if "torn" in x]
    model = torch.load(out / "model.pt", weights_only=True)
    reference = torch.load(finished / "model.pt", weights_only=True)
    assert len(warnings) == 1
    assert "rounds.jsonl: dropped its torn last line 3" in warnings[0]
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 3
    assert all(torch.equal(model[k], reference[k]) for k in reference)


def _checkpoint_at(out: Path, finished: Path, rnd: int) -> None:
    """The checkpoint of round ``rnd`` of TINY, made by rerunning it to that round."""
    from bench.training import run_training

    scratch = out.parent / f"upto{rnd}"

    def stop(record: Any) -> None:
        if record.round == rnd:
            raise KeyboardInterrupt

    config = TrainingConfig(**{**json.loads((finished / "run.json").read_text())["config"],
                               "data_dir": None})
    with pytest.raises(KeyboardInterrupt):
        run_training(config, scratch, progress=stop)
    shutil.copy(scratch / "checkpoint.pt", out / "checkpoint.pt")


def test_a_checkpoint_of_another_width_is_refused_before_work(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """run.json says width 0.25, the checkpoint holds another model: named, nothing changed."""
    record = json.loads((run_copy / "run.json").read_text())
    record["config"]["width"] = 0.5
    (run_copy / "run.json").write_text(json.dumps(record))
    before = _hashes(run_copy)
    line = refused([*TINY, "--width", "0.5", "--out", str(run_copy), "--resume"], capsys)
    assert "checkpoint.pt: weights[" in line
    assert "(another model or width?)" in line
    assert _hashes(run_copy) == before


def test_a_full_disk_mid_run_is_one_line_and_resume_finishes_it_exactly(
    tmp_path: Path, finished: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Appending round 2's record fails with ENOSPC: exit 2, round 1 kept; then --resume."""
    out = tmp_path / "run"
    write = JsonlSink.write

    def full_at_round_2(self: JsonlSink, record: Any) -> None:
        if record.round == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        write(self, record)

    monkeypatch.setattr(JsonlSink, "write", full_at_round_2)
    capsys.readouterr()
    code = main([*TINY, "--out", str(out)])
    monkeypatch.undo()
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if "profl: error: " in x]  # besides the progress bar
    kept = torch.load(out / "checkpoint.pt", weights_only=True)["round"]
    assert main([*TINY, "--out", str(out), "--resume"]) == 0
    model = torch.load(out / "model.pt", weights_only=True)
    reference = torch.load(finished / "model.pt", weights_only=True)
    assert code == 2
    assert len(errors) == 1
    assert "rounds.jsonl (No space left on device)" in errors[0]
    assert "Traceback" not in err
    assert kept == 1
    assert all(torch.equal(model[k], reference[k]) for k in reference)


def test_a_changed_suite_is_refused_naming_the_run_and_the_setting(tmp_path: Path) -> None:
    """``profl bench --resume`` after editing the suite: no finished run is reused."""
    old = AccuracySection(base=TrainingConfig(dataset="synthetic", rounds=3, clients=4,
                                              per_round=2), methods=("fedavg",),
                          partitions=("iid",), seeds=(0,))
    finished_run = tmp_path / "runs" / "fedavg-iid-s0"
    finished_run.mkdir(parents=True)
    (finished_run / "run.json").write_text(json.dumps(run_record(old.config("fedavg", "iid", 0))))
    (finished_run / "result.json").write_text("{}")
    new = AccuracySection(base=TrainingConfig(dataset="synthetic", rounds=5, clients=4,
                                              per_round=2), methods=("fedavg",),
                          partitions=("iid",), seeds=(0,))
    with pytest.raises(ConfigError, match=r"fedavg-iid-s0: finished with other settings "
                                          r"\(rounds 3 -> 5\)"):
        accuracy_jobs(new, tmp_path, resume=True, suite="s")


def test_a_run_folder_the_suite_no_longer_has_is_refused(tmp_path: Path) -> None:
    section = AccuracySection(base=TrainingConfig(dataset="synthetic", clients=4, per_round=2),
                              methods=("fedavg",), partitions=("iid",), seeds=(0,))
    (tmp_path / "runs" / "profl-iid-s0").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"runs/profl-iid-s0 is not a run of suite s"):
        accuracy_jobs(section, tmp_path, resume=True, suite="s")


def test_bench_resume_of_an_empty_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    line = refused(["bench", "smoke", "--out", str(tmp_path / "out"), "--resume"], capsys)
    assert "nothing to resume" in line


# ------------------------------------------------------------------------------ fail early


def test_out_naming_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr("bench.training.load_data", _no_work)
    line = refused([*TINY, "--out", str(tmp_path / "file")], capsys)
    assert "is a file, not a folder" in line


def _no_work(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("set-up work started before the check")


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_out_on_a_read_only_or_full_disk_is_refused_before_any_work(
    tmp_path: Path, code: int, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    def refuse(fd: int, data: bytes) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("bench.training.load_data", _no_work)
    monkeypatch.setattr(os, "write", refuse)
    line = refused([*TINY, "--out", str(tmp_path / "run")], capsys)
    assert f"cannot write in {tmp_path} ({os.strerror(code)})" in line


def test_device_cuda_without_a_gpu_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("bench.training.load_data", _no_work)
    line = refused([*TINY, "--device", "cuda", "--out", str(tmp_path / "run")], capsys)
    assert "device='cuda', but torch sees no CUDA device here" in line
    assert not (tmp_path / "run").exists()


def test_per_round_above_the_clients_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused([*TINY, "--clients", "6", "--per-round", "10", "--out",
                    str(tmp_path / "run")], capsys)
    assert "per_round=10 is more than clients=6" in line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ray_with_a_dead_address_fails_within_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    line = refused([*TINY, "--backend", "ray", "--address", f"127.0.0.1:{_free_port()}",
                    "--out", str(tmp_path / "run")], capsys)
    assert "cannot connect to Ray" in line
    assert time.monotonic() - start < 10


def test_check_reports_a_missing_baseline_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench.gate, "current_values", _no_work)
    line = refused(["check", "--baseline", str(tmp_path / "none.json")], capsys)
    assert "no such baseline" in line


def test_check_reports_a_missing_torch_version_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline = tmp_path / "b.json"
    baseline.write_text(json.dumps({"schema_version": 1, "torch": {"0.1": {"cases": {}}}}))
    monkeypatch.setattr(bench.gate, "current_values", _no_work)
    line = refused(["check", "--baseline", str(baseline)], capsys)
    assert "no baseline for torch" in line


def test_a_baseline_without_cases_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = tmp_path / "b.json"
    version = bench.gate.torch_minor()
    baseline.write_text(json.dumps({"schema_version": 1, "torch": {version: {}}}))
    line = refused(["check", "--baseline", str(baseline)], capsys)
    assert f"torch.{version}.cases is missing" in line


def test_report_on_a_training_run_folder_is_refused_and_writes_nothing(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _hashes(run_copy)
    line = refused(["report", str(run_copy)], capsys)
    assert "a training run's folder (profl train)" in line
    assert _hashes(run_copy) == before


def test_trace_json_into_a_closed_pipe_ends_quietly() -> None:
    """``profl trace --json | head``: the reader is gone before the output comes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "trace", "--model", "cnn", "--width", "0.25",
         "--batch-size", "2", "--json"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141
    assert b"Traceback" not in err
    assert err == b""
