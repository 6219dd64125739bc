"""``profl plan`` prints the plans it printed before the planner was made faster.

``golden_plans/*.json`` are ``profl plan --model M --batch-size 64 --json`` (predict probe, 1
thread: the heap objective depends on the thread count, and the planner's probe always runs at
``PLAN_THREADS = 1``); ``torchvision_mobilenet_v3_small.json`` is at ``--batch-size 32`` (the
issue's speed target), made by the planner of commit b5d851f, before it skipped the shrink
steps that cannot change a plan. They were first made by the planner before its speed-ups (commit
6bb10ed), which printed the same files as the faster one; they were made again when ProFL's
basic-layer fit began training the whole output module (``fit_scope="module"``), which raised
the ``shrink:t`` steps' bytes: resnet18's and resnet34's plans kept their partitions,
mobilenet_v2's changed between partitions of equal peak, and vgg16's search found a partition
with a lower peak (138.5 instead of 148.9 MiB).

* resnet18: the whole plan is searched again (about a minute on one core) and must be the
  same partition, every step's bytes and the stage partition's;
* every other golden model: its planned partition is measured again (a few seconds) and
  every step, and the full model, must need the same bytes (the probe has not changed what it
  measures);
* every golden model's whole search runs only with ``PROFL_GOLDEN_PLANS=all`` (minutes each).

The whole searches of resnet18, resnet34, mobilenet_v2 and mobilenet_v3_small were run with
the planner that skips shrink steps (commit 168e2f7) and with the one before it: all eight
printed their golden files byte for byte. Those of resnet34 and mobilenet_v3_small were run
again with the planner that checks each chain of modules once and keeps reports across runs
(after commit 669a3d6), cold and from its cache; mobilenet_v2's and vgg16's with
``PROFL_GOLDEN_PLANS=all`` (docs/planner.md, Planner speed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench.planning import PLAN_THREADS, make_plan, plan_record
from profl_core.memory import measure
from profl_core.memory.case import all_cases
from profl_core.models import ModelSpec, native_spec

GOLDEN = Path(__file__).resolve().parent / "golden_plans"
MODELS = {path.stem: path for path in sorted(GOLDEN.glob("*.json"))}
CHEAP_SEARCH = ("resnet18",)
#: The batch size of a golden plan (64 unless named here).
BATCH = {"torchvision_mobilenet_v3_small": 32}
ALL = os.environ.get("PROFL_GOLDEN_PLANS") == "all"


def _golden(stem: str) -> dict[str, Any]:
    return json.loads(MODELS[stem].read_text())


def _steps(steps: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(s["case"], s["peak_bytes"], s["tensor_peak_bytes"]) for s in steps]


def _search_again(record: dict[str, Any]) -> dict[str, Any]:
    spec = native_spec(record["model"]["name"])
    planned, stage = make_plan(spec, batch_size=record["batch_size"],
                               max_blocks=record["max_blocks"], probe=record["probe"],
                               objective=record["objective"])
    again = plan_record(planned, stage, batch_size=record["batch_size"], probe=record["probe"],
                        max_blocks=record["max_blocks"], objective=record["objective"],
                        fleet=None)
    return json.loads(json.dumps(again))  # as the plan file has it: lists, not tuples


def test_the_golden_plans_are_one_thread_predict_plans() -> None:
    assert set(MODELS) >= {"resnet18", "resnet34", "vgg16", "torchvision_mobilenet_v2",
                           "torchvision_mobilenet_v3_small"}
    for stem in MODELS:
        record = _golden(stem)
        assert (record["threads"], record["probe"], record["batch_size"]) == (
            1, "predict", BATCH.get(stem, 64))
        assert record["threads"] == PLAN_THREADS


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(MODELS))
def test_the_golden_partitions_need_the_same_bytes(stem: str) -> None:
    if stem in CHEAP_SEARCH:
        pytest.skip("the whole search is compared")
    record = _golden(stem)
    spec = ModelSpec(**{**record["model"], "blocks": tuple(record["model"]["blocks"])})
    reports = {case.label: measure(case, probe="predict", threads=PLAN_THREADS)
               for case in all_cases(spec, batch_size=record["batch_size"])}
    got = [(label, r.required_bytes, r.tensor_peak_bytes)
           for label, r in reports.items() if label != "full"]
    assert got == _steps(record["steps"])
    assert reports["full"].required_bytes == record["full_bytes"]
    assert reports["full"].tensor_peak_bytes == record["full_tensor_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(MODELS))
def test_the_search_finds_the_golden_plan(stem: str) -> None:
    if stem not in CHEAP_SEARCH and not ALL:
        pytest.skip("minutes on one core; run with PROFL_GOLDEN_PLANS=all")
    assert _search_again(_golden(stem)) == _golden(stem)
