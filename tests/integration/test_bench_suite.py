"""``profl bench smoke`` end to end, and an interrupted suite resuming without redoing work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import bench.runner
from bench.cli import main
from profl_core.results import read_result

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUNS = ["profl-iid", "fedavg-iid", "heterofl-iid"]


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


def test_interrupted_suite_resumes_without_redoing_finished_runs(
    smoke_run: tuple[Path, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupt the third run after round 2; --resume redoes only that run, from its
    checkpoint, and ends with the uninterrupted run's numbers."""
    reference, _ = smoke_run
    folder = tmp_path / "run"
    real = bench.runner.run_training
    calls: list[str] = []

    def interrupting(config: Any, out: Path, **kwargs: Any) -> Any:
        calls.append(out.name)
        if out.name == "heterofl-iid":
            inner = kwargs["progress"]

            def progress(record: Any) -> None:
                inner(record)
                if record.round == 2:
                    raise KeyboardInterrupt

            kwargs["progress"] = progress
        return real(config, out, **kwargs)

    monkeypatch.setattr(bench.runner, "run_training", interrupting)
    assert main(["bench", "smoke", "--out", str(folder)]) == 130
    assert calls == RUNS
    assert not (folder / "runs" / "heterofl-iid" / "result.json").exists()
    assert len((folder / "runs" / "heterofl-iid" / "rounds.jsonl").read_text().splitlines()) == 2
    finished = {name: (folder / "runs" / name / "result.json").stat().st_mtime_ns
                for name in RUNS[:2]}
    cases = {p.name: p.stat().st_mtime_ns for p in (folder / "cases").glob("*.json")}
    first_rounds = (folder / "runs" / "heterofl-iid" / "rounds.jsonl").read_text()

    calls.clear()
    monkeypatch.setattr(bench.runner, "run_training", lambda *a, **k: (
        calls.append(a[1].name), real(*a, **k))[1])
    assert main(["bench", "smoke", "--out", str(folder), "--resume"]) == 0

    assert calls == ["heterofl-iid"]
    for name, mtime in finished.items():
        assert (folder / "runs" / name / "result.json").stat().st_mtime_ns == mtime
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "cases").glob("*.json")} == cases
    rounds = (folder / "runs" / "heterofl-iid" / "rounds.jsonl").read_text()
    assert rounds.startswith(first_rounds)
    resumed = [json.loads(x)["accuracy"] for x in rounds.splitlines()]
    uninterrupted = [json.loads(x)["accuracy"]
                     for x in (reference / "runs" / "heterofl-iid" / "rounds.jsonl")
                     .read_text().splitlines()]
    assert resumed == pytest.approx(uninterrupted)
