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

Every golden model's whole plan is searched again (about 1.5 minutes for the five on one core,
since the search measures only the steps a best partition can need) and must be the same
partition, every step's bytes and the stage partition's, byte for byte.

The whole searches of resnet18, resnet34, mobilenet_v2 and mobilenet_v3_small were run with
the planner that skips shrink steps (commit 168e2f7) and with the one before it: all eight
printed their golden files byte for byte; so did resnet34's and mobilenet_v3_small's with the
planner that checks each chain of modules once and keeps reports across runs (after commit
669a3d6), cold and from its cache, and all five with the planner that bounds grow steps from
below (docs/planner.md, Planner speed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.planning import PLAN_THREADS, make_plan, plan_record
from profl_core.models import native_spec

GOLDEN = Path(__file__).resolve().parent / "golden_plans"
MODELS = {path.stem: path for path in sorted(GOLDEN.glob("*.json"))}
#: The batch size of a golden plan (64 unless named here).
BATCH = {"torchvision_mobilenet_v3_small": 32}


def _golden(stem: str) -> dict[str, Any]:
    return json.loads(MODELS[stem].read_text())


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
def test_the_search_finds_the_golden_plan(stem: str) -> None:
    assert _search_again(_golden(stem)) == _golden(stem)
