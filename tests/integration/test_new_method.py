"""A method added through the registry alone runs in ``profl train``, a suite and the memory
section (docs/methods.md: a new method is one file and one registry entry), registered by a
call or, for spawned workers too, as an installed package's entry point.

The toy is a federated linear probe: the blocks keep their random initial weights (frozen, run
under ``no_grad``) and only the head is trained and averaged. Its one sub-model is the memory
kind ``head``, which no other method has.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from torch import nn

from bench.cli import main
from profl_core.devices import Fleet
from profl_core.fl import FederatedData, fedavg, select_clients
from profl_core.fl.method import LocalTraining, Method
from profl_core.fl.selection import required
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods.registry import (
    PLUGIN_GROUP,
    MemoryKind,
    MethodInfo,
    register,
    unregister,
)
from profl_core.models import BlockedModel

HEAD = "head"


@dataclass(frozen=True, kw_only=True)
class HeadOnlyConfig(LocalTraining):
    """The local training; nothing else."""

    where: ClassVar[str] = "head-only"


class HeadOnly(Method):
    """FedAvg of the head on frozen random features."""

    name = "head-only"
    config: HeadOnlyConfig

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        assert isinstance(model, BlockedModel)
        template = copy.deepcopy(model)
        return ServerState(weights=dict(template.state_dict()), meta={"rounds_used": 0},
                           structure=template)

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        return {HEAD: self.config.task(0, HEAD, frozenset({HEAD}), 0)}

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        model = copy.deepcopy(state.structure)
        model.load_state_dict(state.weights)
        blocks = tuple(model.block_names())
        return SubModel(modules={n: model.get_submodule(n) for n in (*blocks, HEAD)},
                        prefix=blocks, student=(HEAD,), trainable=frozenset({HEAD}))

    def configure_round(self, rnd: int, state: ServerState, fleet: Fleet,
                        memory_table: MemoryTable, rng: np.random.Generator) -> list[ClientTask]:
        need = required(memory_table, HEAD)
        return [self.config.task(cid, HEAD, frozenset({HEAD}), need)
                for cid in select_clients(fleet, need, self.config.per_round, rng,
                                          submodel=HEAD)]

    def aggregate(self, rnd: int, state: ServerState,
                  updates: Sequence[ClientUpdate]) -> ServerState:
        return replace(state, weights=fedavg(state.weights, updates),
                       meta={"rounds_used": int(state.meta["rounds_used"]) + 1})


def build_head_only(config: HeadOnlyConfig, data: FederatedData | None) -> HeadOnly:
    return HeadOnly(config)


#: The toy's registry entry (also what the plugin's entry point names).
HEAD_ONLY = MethodInfo("head-only", "other", HeadOnlyConfig, build_head_only,
                       kinds=(MemoryKind(HEAD),))


@pytest.fixture
def head_only() -> Iterator[None]:
    """The toy in the registry for one test."""
    register(HEAD_ONLY)
    yield
    unregister("head-only")


@pytest.fixture
def head_only_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The toy as an installed package's ``profl.methods`` entry point."""
    dist = tmp_path / "site" / "profl_toy-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: profl-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{PLUGIN_GROUP}]\nhead-only = {__name__}:HEAD_ONLY\n")
    monkeypatch.syspath_prepend(str(dist.parent))
    yield
    unregister("head-only")


TINY_RUN = ["--dataset", "synthetic", "--model", "cnn", "--width", "0.25", "--clients", "4",
            "--per-round", "2", "--rounds", "2", "--local-epochs", "1", "--batch-size", "8",
            "--samples-per-client", "16", "--test-samples", "32"]


@pytest.mark.usefixtures("head_only", "one_thread")
def test_profl_train_runs_a_registered_method(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--method", "head-only", *TINY_RUN, "--out", str(out)]) == 0
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["accuracy"] is not None
    assert json.loads((out / "result.json").read_text())["extra"]["status"] == "completed"


@pytest.mark.usefixtures("head_only_plugin", "one_thread")
def test_a_suite_runs_a_plugin_method_and_measures_its_sub_model(tmp_path: Path) -> None:
    """The accuracy section trains it and the memory section measures its ``head`` case, both
    in spawned workers (two each), which find it through its entry point."""
    suite = tmp_path / "toy.toml"
    suite.write_text("""name = "toy"
description = "a registered toy method"

[memory]
models = ["cnn"]
batch_size = 8
methods = ["head-only"]
workers = 2

[accuracy]
dataset = "synthetic"
model = "cnn"
width = 0.25
clients = 4
per_round = 2
rounds = 2
local_epochs = 1
batch_size = 8
samples_per_client = 16
test_samples = 32
partitions = ["iid"]
methods = ["head-only", "fedavg"]
seeds = [0]
workers = 2
""")
    out = tmp_path / "out"
    assert main(["bench", str(suite), "--out", str(out)]) == 0
    records = {(r["key"], r["metric"]): r["value"]
               for r in json.loads((out / "result.json").read_text())["records"]}
    run = "head-only/cnn/synthetic/relative-uniform/iid/seed0"
    assert 0 <= records[(run, "final_accuracy")] <= 1
    assert records[(run, "rounds")] == 2
    assert records[("cnn/head/bs8", "peak_bytes")] > 0
    assert records[("cnn/head/bs8", "heap_peak_bytes")] >= records[("cnn/head/bs8", "peak_bytes")]


def test_a_broken_plugin_stops_profl_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dist = tmp_path / "profl_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: profl-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{PLUGIN_GROUP}]\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("profl: error: method plugin broken = 'no_such_module:X': cannot load")
    assert "fix or uninstall the package" in err
