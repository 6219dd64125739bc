"""Backends and client faults: budgets refused in the client, drops recorded, Ray == local.

The Ray tests (marker ``ray``) start a local Ray with 2 CPUs and no dashboard once for the
module and shut it down at the end; they are skipped when ray is not installed.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_fl import FLEET, TABLE, ListSink, profl, tiny_data, tiny_model

from profl_core.errors import ConfigError
from profl_core.fl import (
    JsonlSink,
    RoundFailedError,
    RunConfig,
    client_seed,
    run_federated,
)
from profl_core.fl.types import ServerState
from profl_core.methods.fedavg import FedAvg, FedAvgConfig

pytestmark = pytest.mark.integration


class CarelessFedAvg(FedAvg):
    """AllLarge's selection (every device) with the budget check on: weak clients must refuse."""

    enforces_memory = True  # type: ignore[assignment]


def careless(rounds: int = 2) -> CarelessFedAvg:
    """Full-model FedAvg over all 4 devices, budgets checked."""
    return CarelessFedAvg(FedAvgConfig(rounds=rounds, per_round=4, local_epochs=1,
                                       batch_size=16, lr=0.05))


def run(method: object, sink: object, backend: object = "local", **config: object) -> ServerState:
    """run_federated on the tiny setup."""
    rounds = config.pop("rounds", 2)
    table = config.pop("table", TABLE)
    return run_federated(method, FLEET, tiny_data(),  # type: ignore[arg-type]
                         RunConfig(rounds=rounds, seed=0, **config),  # type: ignore[arg-type]
                         model=tiny_model(), memory_table=table, sink=sink,  # type: ignore[arg-type]
                         backend=backend)  # type: ignore[arg-type]


def test_client_seed_depends_only_on_seed_round_client() -> None:
    """Same triple, same seed; any change of one part gives another seed."""
    assert client_seed(0, 3, 7) == client_seed(0, 3, 7)
    seeds = {client_seed(s, r, c) for s in (0, 1) for r in (1, 2) for c in (0, 1)}
    assert len(seeds) == 8
    assert all(0 <= s < 2**63 for s in seeds)


def test_over_budget_client_refuses_and_faulty_client_is_dropped(tmp_path: Path) -> None:
    """Devices 0-2 refuse the 100 B model; client 3 trains unless it raises."""
    # Execute
    sink = JsonlSink(tmp_path / "rounds.jsonl")
    run(careless(), sink)
    rows = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    # Assert
    assert len(rows) == 2
    for row in rows:
        assert row["participants"] == [3]
        assert [cid for cid, _ in row["dropped"]] == [0, 1, 2]
        assert all(r.startswith("refused: full needs 100 B, budget ") for _, r in row["dropped"])


def test_raising_and_oom_clients_are_dropped_and_the_run_goes_on() -> None:
    """FedAvg (AllLarge, no budget check): clients 1 and 2 fail every round, 0 and 3 train."""
    sink = ListSink()
    run(FedAvg(FedAvgConfig(rounds=2, per_round=4, local_epochs=1, batch_size=16, lr=0.05)),
        sink, faults={1: "raise", 2: "oom"})
    assert [r.participants for r in sink.records] == [(0, 3), (0, 3)]
    reasons = dict(sink.records[0].dropped)
    assert reasons[1] == "error: InjectedFaultError: injected fault in client 1"
    assert reasons[2].startswith("out of memory: MemoryError")
    assert sink.records[-1].accuracy is not None


def test_too_few_survivors_retries_then_fails(tmp_path: Path) -> None:
    """Every client fails: the round is tried 1 + round_retries times, then RoundFailedError."""
    sink = ListSink()
    with pytest.raises(RoundFailedError, match=r"round 1: .* 2 attempt\(s\).*attempt 2: error"):
        run(FedAvg(FedAvgConfig(rounds=2, per_round=4, local_epochs=1, batch_size=16)), sink,
            faults=dict.fromkeys(range(4), "raise"), round_retries=1)
    assert sink.records == []


def test_crash_fault_needs_the_ray_backend() -> None:
    """A worker crash cannot be emulated in process: a one-line ConfigError."""
    with pytest.raises(ConfigError, match="use backend 'ray'"):
        run(profl(2), ListSink(), faults={1: "crash"})


@pytest.fixture(scope="module")
def local_ray() -> object:
    """A local Ray with 2 CPUs for this module."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    # Workers cannot import this test module: send its classes (CarelessFedAvg) by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.ray
def test_ray_gives_the_same_weights_as_local(local_ray: object) -> None:
    """5 ProFL rounds (shrinking and fitting steps): identical weights, losses, participants.

    Bitwise equality needs the same torch thread count on both sides (CPU kernels split their
    reductions by thread): the Ray actors use 1 thread, so the local reference does too.
    """
    local_sink, ray_sink = ListSink(), ListSink()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run(profl(5), local_sink, rounds=5)
    finally:
        torch.set_num_threads(threads)
    remote = run(profl(5), ray_sink, backend="ray", rounds=5)
    assert remote.weights.keys() == local.weights.keys()
    assert all(torch.equal(remote.weights[k], local.weights[k]) for k in local.weights)
    assert [r.participants for r in ray_sink.records] == [
        r.participants for r in local_sink.records]
    assert [r.loss for r in ray_sink.records] == [r.loss for r in local_sink.records]


@pytest.mark.ray
def test_ray_drops_refused_failed_and_dead_clients(local_ray: object) -> None:
    """The full model needs 70 B: clients 0 and 1 refuse, 2's worker dies (both rounds: the
    actor restarts in between), 3 trains."""
    sink = ListSink()
    run(careless(), sink, backend="ray", faults={2: "crash"}, table=TABLE | {"full": 70})
    assert [r.participants for r in sink.records] == [(3,), (3,)]
    for record in sink.records:
        reasons = dict(record.dropped)
        assert reasons[0] == "refused: full needs 70 B, budget 10 B"
        assert reasons[1] == "refused: full needs 70 B, budget 60 B"
        assert reasons[2].startswith("worker died: ")
    assert sink.records[-1].accuracy is not None
