"""``profl bench smoke`` end to end (two worker processes), the same suite in one process giving
the same weights, an interrupted suite resuming without redoing work, and a worker's error."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import bench.runner
from bench.cli import main
from bench.suites import SUITES_DIR
from profl_core.results import read_result

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUNS = ["profl-iid-s0", "fedavg-iid-s0", "heterofl-iid-s0"]


def one_worker_smoke(folder: Path) -> Path:
    """The smoke suite with ``workers = 1`` (every run in this process)."""
    text = (SUITES_DIR / "smoke.toml").read_text()
    assert "\nworkers = 2\n" in text
    path = folder / "smoke.toml"
    path.write_text(text.replace("\nworkers = 2\n", "\nworkers = 1\n"))
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """One uninterrupted smoke-suite run folder and its wall time (s)."""
    folder = tmp_path_factory.mktemp("smoke") / "run"
    start = time.perf_counter()
    assert main(["bench", "smoke", "--out", str(folder)]) == 0
    return folder, time.perf_counter() - start


def test_smoke_suite_runs_end_to_end(smoke_run: tuple[Path, float]) -> None:
    """Memory section, three training runs, tables, figures, report; well under 3 minutes."""
    folder, wall = smoke_run
    assert wall < 150, f"smoke suite took {wall:.0f} s"
    result = read_result(folder / "result.json")
    metrics = {r.metric for r in result.records}
    assert {"peak_bytes", "final_accuracy", "best_accuracy", "memory_reduction"} <= metrics
    for name in RUNS:
        assert (folder / "runs" / name / "result.json").is_file()
        rounds = (folder / "runs" / name / "rounds.jsonl").read_text().splitlines()
        assert len(rounds) == 4
    for name in ("accuracy_curves", "accuracy_vs_memory", "participation", "memory_breakdown"):
        assert (folder / "figures" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
    report = (folder / "report.md").read_text()
    assert "## Accuracy under the fleet's memory limits" in report
    assert "## Training memory at batch 32" in report
    assert (folder / "tables" / "accuracy.md").is_file()


def test_one_worker_gives_the_weights_of_two_workers(
    smoke_run: tuple[Path, float], tmp_path: Path
) -> None:
    """The same suite in this process (workers = 1) and in two spawned worker processes
    (the shipped smoke suite, workers = 2, one torch thread each) ends with equal weights."""
    reference, _ = smoke_run
    folder = tmp_path / "run"
    assert main(["bench", str(one_worker_smoke(tmp_path)), "--out", str(folder)]) == 0
    for name in RUNS:
        ours = torch.load(folder / "runs" / name / "model.pt", weights_only=True)
        theirs = torch.load(reference / "runs" / name / "model.pt", weights_only=True)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{name}: {key} differs"
        config = read_result(folder / "runs" / name / "result.json").extra["config"]
        assert config["label"] == name.split("-")[0]


def test_an_error_in_a_worker_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that fails in a worker process (no device fits a ProFL step) stops the suite with
    the run's one-line ConfigError."""
    fleet = tmp_path / "tiny.toml"
    fleet.write_text('name = "tiny"\nkind = "relative"\ncount = 4\nlow_fraction = 0.001\n'
                     'high_fraction = 0.002\nseed = 0\n')
    suite = tmp_path / "fails.toml"
    suite.write_text(f"""# profl bench fails.toml
[accuracy]
dataset = "synthetic"
width = 0.25
fleet = "{fleet}"
clients = 4
per_round = 2
rounds = 2
local_epochs = 1
samples_per_client = 16
test_samples = 32
partitions = ["iid"]
methods = ["profl"]
workers = 2
""")
    assert main(["bench", str(suite), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("profl: error: no device of fleet 'tiny' can train")
    assert not list((tmp_path / "run" / "runs").glob("*/result.json"))


def test_interrupted_suite_resumes_without_redoing_finished_runs(
    smoke_run: tuple[Path, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupt the third run after round 2; --resume redoes only that run, from its
    checkpoint, and ends with the uninterrupted run's numbers (in this process: workers = 1,
    so the patched run_training is the one called)."""
    reference, _ = smoke_run
    folder = tmp_path / "run"
    suite = str(one_worker_smoke(tmp_path))
    real = bench.runner.run_training
    calls: list[str] = []

    def interrupting(config: Any, out: Path, **kwargs: Any) -> Any:
        calls.append(out.name)
        if out.name == "heterofl-iid-s0":
            inner = kwargs["progress"]

            def progress(record: Any) -> None:
                inner(record)
                if record.round == 2:
                    raise KeyboardInterrupt

            kwargs["progress"] = progress
        return real(config, out, **kwargs)

    monkeypatch.setattr(bench.runner, "run_training", interrupting)
    assert main(["bench", suite, "--out", str(folder)]) == 130
    assert calls == RUNS
    assert not (folder / "runs" / "heterofl-iid-s0" / "result.json").exists()
    assert len((folder / "runs" / "heterofl-iid-s0" / "rounds.jsonl").read_text()
               .splitlines()) == 2
    finished = {name: (folder / "runs" / name / "result.json").stat().st_mtime_ns
                for name in RUNS[:2]}
    cases = {p.name: p.stat().st_mtime_ns for p in (folder / "cases").glob("*.json")}
    first_rounds = (folder / "runs" / "heterofl-iid-s0" / "rounds.jsonl").read_text()

    calls.clear()
    monkeypatch.setattr(bench.runner, "run_training", lambda *a, **k: (
        calls.append(a[1].name), real(*a, **k))[1])
    assert main(["bench", suite, "--out", str(folder), "--resume"]) == 0

    assert calls == ["heterofl-iid-s0"]
    for name, mtime in finished.items():
        assert (folder / "runs" / name / "result.json").stat().st_mtime_ns == mtime
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "cases").glob("*.json")} == cases
    rounds = (folder / "runs" / "heterofl-iid-s0" / "rounds.jsonl").read_text()
    assert rounds.startswith(first_rounds)
    resumed = [json.loads(x)["accuracy"] for x in rounds.splitlines()]
    uninterrupted = [json.loads(x)["accuracy"]
                     for x in (reference / "runs" / "heterofl-iid-s0" / "rounds.jsonl")
                     .read_text().splitlines()]
    assert resumed == pytest.approx(uninterrupted)
