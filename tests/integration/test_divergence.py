"""Divergence is caught, never reported as accuracy (DESIGN §5, loop module docstring)."""

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_fl import FLEET, TABLE, ListSink, tiny_data, tiny_model

from bench.cli import main
from profl_core.fl import (
    ClientDrop,
    ClientTask,
    ClientUpdate,
    DivergedError,
    JsonlSink,
    LocalConfig,
    RunConfig,
    load_checkpoint,
    run_client,
    run_federated,
)
from profl_core.fl.client import ClientJob, non_finite
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.results import read_result

pytestmark = pytest.mark.integration


def fedavg(lr: float, rounds: int = 6) -> FedAvg:
    """AllLarge FedAvg on the tiny setup with learning rate ``lr``."""
    return FedAvg(FedAvgConfig(rounds=rounds, per_round=2, local_epochs=1, batch_size=16, lr=lr))


def test_non_finite_update_names_the_loss_or_the_tensor() -> None:
    """The client-side check names what is non-finite, and passes finite updates."""
    finite = ClientUpdate(client_id=0, state={"w": torch.ones(3)}, num_examples=1,
                          metrics={"train_loss": 0.5})
    bad_loss = ClientUpdate(client_id=0, state={"w": torch.ones(3)}, num_examples=1,
                            metrics={"train_loss": float("nan")})
    bad_tensor = ClientUpdate(client_id=0, state={"w": torch.tensor([1.0, float("inf")]),
                                                  "n": torch.tensor(3)},
                              num_examples=1, metrics={"train_loss": 0.5})
    assert non_finite(finite) is None
    assert non_finite(bad_loss) == "train loss nan"
    assert non_finite(bad_tensor) == "tensor w"


def test_client_with_non_finite_result_is_dropped_with_its_reason() -> None:
    """A client trained from NaN weights returns a ClientDrop, reason ``non-finite: ...``."""
    method = fedavg(lr=0.05)
    model = tiny_model()
    state = method.init_state(model, __import__("numpy").random.default_rng(0))
    poisoned = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                for k, v in state.weights.items()}
    task = ClientTask(client_id=1, submodel="full", trainable=frozenset({"block1", "block2",
                      "block3", "block4", "head"}), required_bytes=0, local_epochs=1,
                      batch_size=16)
    result = run_client(method, replace(state, weights=poisoned),
                        ClientJob(task=task, seed=0), tiny_data().clients[1], LocalConfig())
    assert isinstance(result, ClientDrop)
    assert result.reason.startswith("non-finite: ")


def test_huge_lr_stops_the_run_as_diverged_with_the_last_finite_checkpoint(
    tmp_path: Path,
) -> None:
    """lr 100: DivergedError names round, stage, step; checkpoint and records = the rounds
    before it, all finite."""
    sink = JsonlSink(tmp_path / "rounds.jsonl")
    config = RunConfig(rounds=6, seed=0, checkpoint_every=1)
    with pytest.raises(DivergedError) as caught:
        run_federated(fedavg(lr=100.0), FLEET, tiny_data(), config, model=tiny_model(),
                      memory_table=TABLE, sink=sink, checkpoint_dir=tmp_path)
    err = caught.value
    lines = (tmp_path / "rounds.jsonl").read_text(encoding="utf-8").splitlines()
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert err.round == 2
    assert str(err).startswith("diverged at round 2 (full step 0, full): train loss ")
    assert "\n" not in str(err)
    assert len(lines) == 1
    assert checkpoint["round"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in checkpoint["weights"].values()
               if v.is_floating_point())


def test_every_client_non_finite_is_divergence_not_a_failed_round() -> None:
    """lr 1e4: every update of round 1 is NaN; the run diverges (not RoundFailedError)."""
    with pytest.raises(DivergedError, match=r"round 1 .*every client update was non-finite"):
        run_federated(fedavg(lr=1e4), FLEET, tiny_data(), RunConfig(rounds=6, seed=0),
                      model=tiny_model(), memory_table=TABLE, sink=ListSink())


def test_loss_blowup_rule_fires_before_nan() -> None:
    """lr 100 explodes by round 2 (rule on: the blow-up rule names it); with the rule off
    the same run goes on until its updates are NaN (round 3)."""
    def run(blowup: float) -> DivergedError:
        with pytest.raises(DivergedError) as caught:
            run_federated(fedavg(lr=100.0), FLEET, tiny_data(),
                          RunConfig(rounds=6, seed=0, loss_blowup=blowup), model=tiny_model(),
                          memory_table=TABLE, sink=ListSink())
        return caught.value

    on, off = run(100.0), run(0.0)
    assert on.round == 2
    assert "> 100 x the step's first-round loss" in on.what
    assert off.round == 3
    assert off.what == "every client update was non-finite"


def test_normal_run_is_not_flagged() -> None:
    """lr 0.05 trains to the end without a DivergedError; every record is finite."""
    sink = ListSink()
    run_federated(fedavg(lr=0.05), FLEET, tiny_data(), RunConfig(rounds=6, seed=0),
                  model=tiny_model(), memory_table=TABLE, sink=sink)
    assert len(sink.records) == 6
    assert all(r.train_loss < 10 for r in sink.records)


def test_basic_layer_fit_at_lr_0_1_for_40_rounds_per_step_stays_finite() -> None:
    """ProFL's shrinking (train B4, fit basic4, train B3, fit basic3; 40 rounds each) at
    distill lr 0.1 stays finite, and each fit lowers its distillation loss."""
    method = ProFL(ProFLConfig(rounds=400, per_round=2, local_epochs=1, batch_size=16, lr=0.05,
                               distill_lr=0.1, schedule="fixed"))
    sink = ListSink()
    run_federated(method, FLEET, tiny_data(), RunConfig(rounds=160, seed=0, eval_every=40),
                  model=tiny_model(), memory_table=TABLE, sink=sink)
    fits = {t: [r.train_loss for r in sink.records if r.submodel == f"shrink:{t}"]
            for t in (4, 3)}
    assert len(sink.records) == 160
    assert all(math.isfinite(r.train_loss) for r in sink.records)
    assert len(fits[4]) == 40
    assert len(fits[3]) == 40
    assert sum(fits[4][-5:]) < sum(fits[4][:5])
    assert sum(fits[3][-5:]) < sum(fits[3][:5])


TINY_TRAIN = [
    "train", "--method", "fedavg", "--dataset", "synthetic", "--model", "cnn", "--width", "0.25",
    "--clients", "8", "--per-round", "3", "--rounds", "4", "--local-epochs", "1",
    "--partition", "iid", "--samples-per-client", "32", "--test-samples", "64",
]

DIVERGING_SUITE = """
name = "diverging"
[accuracy]
dataset = "synthetic"
model = "cnn"
width = 0.25
clients = 8
per_round = 3
rounds = 3
local_epochs = 1
batch_size = 16
lr = 0.05
partitions = ["iid"]
methods = ["fedavg", "fedavg-huge-lr"]
seeds = [0]
samples_per_client = 32
test_samples = 64
workers = 1
[accuracy.variants.fedavg-huge-lr]
method = "fedavg"
lr = 10000.0
"""


def test_train_with_a_huge_lr_exits_1_with_one_line_and_status_diverged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``profl train --lr 1e4``: exit 1, one stderr line naming the round, result diverged."""
    code = main([*TINY_TRAIN, "--lr", "10000", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    result = read_result(tmp_path / "result.json")
    assert code == 1
    assert len(err) == 1
    assert err[0].startswith("profl train: diverged at round 1 (full step 0, full): ")
    assert result.extra["status"] == "diverged"
    assert "final_accuracy" not in {r.metric for r in result.records}
    assert (tmp_path / "checkpoint.pt").is_file()
    assert not (tmp_path / "model.pt").exists()


def test_a_suite_goes_on_after_a_diverged_run_and_its_report_says_diverged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The diverged variant is reported as "diverged", never as an accuracy; the other run
    completes and gets its number."""
    suite = tmp_path / "diverging.toml"
    suite.write_text(DIVERGING_SUITE, encoding="utf-8")
    folder = tmp_path / "run"
    code = main(["bench", str(suite), "--out", str(folder)])
    printed = capsys.readouterr().out
    table = (folder / "tables" / "accuracy.md").read_text(encoding="utf-8")
    huge_row = next(line for line in table.splitlines() if "fedavg-huge-lr" in line)
    plain = read_result(folder / "runs" / "fedavg-iid-s0" / "result.json")
    assert code == 0
    assert "fedavg-huge-lr-iid-s0 (2/2): diverged: diverged at round 1" in printed
    assert "| diverged " in huge_row
    assert "diverged: fedavg-huge-lr iid seed 0: diverged at round 1" in printed
    assert plain.extra["status"] == "completed"
    assert "final_accuracy" in {r.metric for r in plain.records}
