"""Tiny end-to-end FL runs on synthetic data: golden loss, learning, resume, feature cache."""

from pathlib import Path

import pytest
import torch
from tiny_fl import FLEET, TABLE, ListSink, profl, tiny_data, tiny_model

from profl_core.fl import JsonlSink, RoundRecord, RunConfig, run_federated
from profl_core.fl.types import ServerState
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.profl import ProFL

pytestmark = pytest.mark.integration

# Test cross-entropy after round 3 of the tiny ProFL run below; see the golden test.
# The fit of round 2 trains the whole output module OM_3 (basic4 and the head; fit_scope
# "module"); with basic4 alone it was 1.2857375, with bare-conv basic layers 1.3447486.
GOLDEN_LOSS_ROUND3 = 1.2896318435668945


def run(method: ProFL | FedAvg, sink: object, **kwargs: object) -> ServerState:
    """run_federated on the tiny setup."""
    config = RunConfig(rounds=kwargs.pop("rounds", 10), seed=0,  # type: ignore[arg-type]
                       feature_cache=kwargs.pop("feature_cache", True),  # type: ignore[arg-type]
                       checkpoint_every=kwargs.pop("checkpoint_every", 0))  # type: ignore[arg-type]
    return run_federated(method, FLEET, tiny_data(), config, model=tiny_model(),
                         memory_table=TABLE, sink=sink, **kwargs)  # type: ignore[arg-type]


def test_profl_golden_loss_learning_and_selection() -> None:
    """Golden test loss after 3 rounds; final full model well above chance; memory respected."""
    # Execute
    sink = ListSink()
    run(profl(), sink)
    records = sink.records
    # Assert
    # Golden number: test cross-entropy after round 3 (shrink step 3, training block3 + OM_3),
    # produced once by this very test on CPU (torch 2.14.1). It moves with any change to the
    # model init, synthetic data, partition, selection order, seeding, local SGD or
    # aggregation; update it deliberately when such a change is intended.
    assert records[2].submodel == "grow:3"
    assert records[2].stage == "shrink"
    assert records[2].loss == pytest.approx(GOLDEN_LOSS_ROUND3, rel=1e-4)
    assert [r.submodel for r in records][-4:] == ["grow:1", "grow:2", "grow:3", "grow:4"]
    # chance is 0.25; the full model must reach at least chance + 0.35
    assert records[-1].accuracy is not None
    assert records[-1].accuracy >= 0.25 + 0.35
    assert all(0 not in r.participants for r in records)
    assert all(r.eligible_share == 0.75 for r in records)


def test_interrupt_and_resume_gives_the_same_weights(tmp_path: Path) -> None:
    """Stop after round 5 (checkpoint every 2 rounds: last at 4), resume, compare to a clean run."""
    # Prepare
    reference = run(profl(), ListSink())
    sink = JsonlSink(tmp_path / "rounds.jsonl")

    def stop_after_5(record: RoundRecord) -> None:
        if record.round == 5:
            raise KeyboardInterrupt

    # Execute
    with pytest.raises(KeyboardInterrupt):
        run(profl(), sink, checkpoint_dir=tmp_path, checkpoint_every=2, progress=stop_after_5)
    resumed = run(profl(), sink, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
    # Assert
    assert resumed.weights.keys() == reference.weights.keys()
    assert all(torch.equal(resumed.weights[k], reference.weights[k]) for k in reference.weights)
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert len(lines) == 10
    assert (tmp_path / "checkpoint.pt").exists()


def test_feature_cache_changes_nothing() -> None:
    """Final weights with and without the frozen-prefix cache are identical."""
    cached = run(profl(), ListSink(), feature_cache=True)
    plain = run(profl(), ListSink(), feature_cache=False)
    assert all(torch.equal(cached.weights[k], plain.weights[k]) for k in cached.weights)


def test_fedavg_learns_and_ignores_memory() -> None:
    """Full-model FedAvg: every device may take part, accuracy above chance."""
    sink = ListSink()
    run(FedAvg(FedAvgConfig(rounds=5, per_round=4, local_epochs=2, batch_size=16, lr=0.05)),
        sink, rounds=5)
    assert len(sink.records) == 5
    assert all(r.participants == (0, 1, 2, 3) for r in sink.records)
    assert sink.records[-1].accuracy is not None
    assert sink.records[-1].accuracy >= 0.25 + 0.35
