"""A suite predicts each distinct memory table once (``plans/``) and hands it to its runs; a run
on the shared table trains exactly as one that predicted its own; runs go longest first.

Oracles: the number of distinct (method, settings) in the suite (2 here), the table a run
predicts by itself in this process, and the measured costs of :data:`bench.runner.RUN_COST_S`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import training
from bench.run_settings import TrainingConfig
from bench.runner import RUN_COST_S, _Job, plan_jobs, run_accuracy, schedule
from bench.suites import AccuracySection
from bench.training import PLANS_DIR, run_training
from profl_core.errors import ConfigError
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.registry import FULL, MethodInfo, register, unregister
from profl_core.results import read_result

BASE = TrainingConfig(dataset="synthetic", model="cnn", width=0.25, clients=6, per_round=3,
                      rounds=2, batch_size=16, samples_per_client=32, test_samples=64,
                      eval_every=1, checkpoint_every=1)
SECTION = AccuracySection(base=BASE, methods=("profl", "fedavg"), partitions=("iid",),
                          seeds=(0, 1), workers=2, threads=1)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The section run in two spawned worker processes."""
    folder = tmp_path_factory.mktemp("suite")
    run_accuracy(SECTION, folder, resume=False, suite="plans", log=lambda line: None)
    return folder


def _runs(folder: Path) -> dict[str, Any]:
    return {p.name: read_result(p / "result.json") for p in sorted((folder / "runs").iterdir())}


def test_each_distinct_table_is_predicted_once_per_suite(suite: Path) -> None:
    files = sorted((suite / PLANS_DIR).glob("*.json"))
    assert len(files) == 2  # profl and fedavg: seeds share a table
    sources = {name: r.extra["memory_table_from"] for name, r in _runs(suite).items()}
    assert "predicted" not in sources.values(), sources  # every run took the pool's table


def test_runs_hold_the_table_of_their_plan_file(suite: Path) -> None:
    tables = [json.loads(p.read_text())["table"] for p in (suite / PLANS_DIR).glob("*.json")]
    for name, result in _runs(suite).items():
        assert result.extra["memory_table_bytes"] in tables, name


def test_a_run_on_the_shared_table_trains_as_one_that_predicted_its_own(
    suite: Path, tmp_path: Path, one_thread: None
) -> None:
    """fedavg seed 1 again in this process, predicting its own table (no plans folder), with
    the workers' one torch thread (the table's key and the kernels' sums depend on it)."""
    training._TABLES.clear()
    config = SECTION.config("fedavg", "iid", 1)
    alone = run_training(config, tmp_path / "alone")
    assert alone.extra["memory_table_from"] == "predicted"
    shared = read_result(suite / "runs" / "fedavg-iid-s1" / "result.json")
    assert alone.extra["memory_table_bytes"] == shared.extra["memory_table_bytes"]
    assert alone.values("final_accuracy") == shared.values("final_accuracy")
    ours = [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
            for line in (tmp_path / "alone" / "rounds.jsonl").read_text().splitlines()]
    theirs = [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
              for line in (suite / "runs" / "fedavg-iid-s1" / "rounds.jsonl")
              .read_text().splitlines()]
    assert ours == theirs


def test_resume_reads_the_tables_instead_of_predicting(suite: Path, tmp_path: Path,
                                                      one_thread: None) -> None:
    training._TABLES.clear()
    config = SECTION.config("profl", "iid", 0)
    result = run_training(config, tmp_path / "again", plans=suite / PLANS_DIR)
    assert result.extra["memory_table_from"] == "shared"


def test_a_plan_file_of_another_key_is_refused(tmp_path: Path) -> None:
    training._TABLES.clear()
    config = SECTION.config("fedavg", "iid", 0)
    run_training(config, tmp_path / "first", plans=tmp_path / PLANS_DIR)
    (path,) = (tmp_path / PLANS_DIR).glob("*.json")
    data = json.loads(path.read_text())
    data["key"][0] = "other"
    path.write_text(json.dumps(data))
    training._TABLES.clear()
    with pytest.raises(ConfigError, match="not the memory table"):
        run_training(config, tmp_path / "second", plans=tmp_path / PLANS_DIR)


def _job(method: str, seed: int, **changes: Any) -> _Job:
    config = replace(SECTION.config(method, "iid", seed), **changes)
    return _Job(name=f"{method}-{seed}", config=config, out=Path("x"), resume=False,
                suite="s", target_accuracy=0.5)


def test_runs_are_scheduled_longest_first_ties_in_suite_order() -> None:
    jobs = [_job(m, s) for s in (0, 1) for m in ("profl", "fedavg-fit", "exclusivefl",
                                                  "fedavg")]
    order = [job.name for job in schedule(jobs)]
    assert RUN_COST_S["fedavg-fit"] > RUN_COST_S["fedavg"] > RUN_COST_S["profl"] \
        > RUN_COST_S["exclusivefl"]
    assert order == ["fedavg-fit-0", "fedavg-fit-1", "fedavg-0", "fedavg-1", "profl-0",
                     "profl-1", "exclusivefl-0", "exclusivefl-1"]


@pytest.fixture
def plugin_method() -> Iterator[None]:
    """A method registered by a plugin (FedAvg under another name), unregistered after."""
    register(MethodInfo("plugin-method", "other", FedAvgConfig, lambda cfg, data: FedAvg(cfg),
                        kinds=(FULL,)))
    yield
    unregister("plugin-method")


def test_an_unknown_method_counts_as_the_longest(plugin_method: None) -> None:
    """A plugin's method has no measured cost."""
    assert "plugin-method" not in RUN_COST_S
    longest = max(RUN_COST_S, key=RUN_COST_S.__getitem__)
    jobs = [_job("fedavg", 0), _job(longest, 0), _job("plugin-method", 0)]
    assert [job.name for job in schedule(jobs)] == [f"{longest}-0", "plugin-method-0",
                                                    "fedavg-0"]


def test_one_plan_job_per_method_and_settings() -> None:
    jobs = [_job(m, s) for s in (0, 1, 2) for m in ("profl", "fedavg")]
    assert [job.name for job in plan_jobs(jobs)] == ["profl-0", "fedavg-0"]
