"""The suite's methods through Flower's simulation give the suite's own result.

Each simulation starts a local Ray (2 CPUs, no dashboard) and 4 simulated nodes, runs the
method until it is finished and shuts Ray down. The oracle is the suite's own loop
(``run_federated``, ``local`` backend) with the same seed, method config, fleet and memory
table: the final weights are ``torch.equal``, the per-round participants and training losses
the same. Both sides train with one torch thread (CPU kernels split reductions by thread).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from tiny_flower import (
    BROKEN,
    FLEET,
    NODES,
    PROFL_TABLE,
    WIDTH_TABLE,
    ListSink,
    node,
    shrunk_node,
    tiny_data,
    tiny_model,
)

from profl_core.fl import RunConfig, run_federated
from profl_core.fl.method import Method
from profl_core.fl.types import MemoryTable, ServerState
from profl_core.methods.fedavg import FedAvgConfig
from profl_core.methods.heterofl import HeteroFLConfig
from profl_core.methods.profl import ProFLConfig
from profl_core.methods.registry import method_info
from profl_flower import MethodStrategy, NodeSetup, make_client_app

#: Bounds the wait for nodes and replies: a simulation whose Ray fails to start fails the
#: test instead of hanging it.
TIMEOUT_S = 300
BACKEND = {"init_args": {"num_cpus": 2, "logging_level": "ERROR", "log_to_driver": False},
           "client_resources": {"num_cpus": 1}}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread in this process (the reference run and the server's aggregation)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, config: object) -> Method:
    """The registry's method of ``name`` with the tiny setup's data."""
    return method_info(name).build(config, tiny_data())


def reference(method: Method, table: MemoryTable) -> tuple[ServerState, ListSink]:
    """The suite's own run: the local backend."""
    sink = ListSink()
    state = run_federated(method, FLEET, tiny_data(), RunConfig(rounds=50, seed=0),
                          model=tiny_model(), memory_table=table, sink=sink)
    return state, sink


def simulate(method: Method, table: MemoryTable,
             setup: Callable[[Context], NodeSetup] = node,
             num_rounds: int | None = None) -> tuple[MethodStrategy, ListSink]:
    """The same method as a Flower strategy in Flower's simulation of 4 nodes."""
    sink = ListSink()
    strategy = MethodStrategy(method, FLEET, table, tiny_model(), seed=0, sink=sink)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid, num_rounds=num_rounds, timeout=TIMEOUT_S,
                       evaluate_fn=strategy.evaluator(tiny_data().test))

    run_simulation(app, make_client_app(setup), num_supernodes=NODES, backend_config=BACKEND)
    return strategy, sink


def unequal(a: ServerState, b: ServerState) -> list[str]:
    """Weight keys whose tensors differ (or that only one side has)."""
    return sorted(k for k in a.weights.keys() | b.weights.keys()
                  if k not in a.weights or k not in b.weights
                  or not torch.equal(a.weights[k], b.weights[k]))


CASES = {
    "fedavg": FedAvgConfig(rounds=2, per_round=4, local_epochs=1, batch_size=16, lr=0.05),
    "heterofl": HeteroFLConfig(rounds=2, per_round=4, local_epochs=1, batch_size=16, lr=0.05,
                               levels=(1.0, 0.5)),
    # One round per step: 4 shrinking/fitting and 4 growing steps of the 4-block cnn.
    "profl": ProFLConfig(rounds=10, per_round=2, local_epochs=1, batch_size=16, lr=0.05,
                         distill_lr=0.05, schedule="fixed"),
}
TABLES = {"fedavg": {"full": 100}, "heterofl": WIDTH_TABLE, "profl": PROFL_TABLE}


@pytest.mark.parametrize("name", list(CASES))
def test_flower_simulation_equals_the_local_backend(name: str) -> None:
    """Same seed, method, fleet and table: torch.equal weights, same rounds, same clients;
    the run ends when the method is finished (ProFL: after its last step), not at a count."""
    # Arrange
    expected, local = reference(build(name, CASES[name]), TABLES[name])
    # Act
    strategy, flower = simulate(build(name, CASES[name]), TABLES[name])
    # Assert
    assert unequal(strategy.state, expected) == []
    assert [r.participants for r in flower.records] == [r.participants for r in local.records]
    assert [r.train_loss for r in flower.records] == [r.train_loss for r in local.records]
    assert [r.accuracy for r in flower.records] == [r.accuracy for r in local.records]
    assert [r.submodel for r in flower.records] == [r.submodel for r in local.records]
    assert strategy.method.is_finished(strategy.state)


def test_a_node_that_fits_nothing_gets_no_work_and_refusals_and_errors_are_drops() -> None:
    """Node 0 (10 B) is never sent a task; node 2 states 0 B itself and refuses its task
    before training, node 1 fails: the server records both as drops with their reasons and
    the rounds go on with the others."""
    strategy, sink = simulate(build("profl", CASES["profl"]), PROFL_TABLE, setup=shrunk_node,
                              num_rounds=4)
    sent = [t.client_id for log in strategy.logs for t in log.tasks]
    drops = [d for r in sink.records for d in r.dropped]
    refused = [reason for cid, reason in drops if cid == 2]
    failed = [reason for cid, reason in drops if cid == BROKEN]
    assert len(sink.records) == 4
    assert 0 not in sent
    assert {cid for cid, _ in drops} == {BROKEN, 2}
    assert refused
    assert all(r.startswith("refused: ") and r.endswith("budget 0 B") for r in refused)
    assert set(failed) == {"error: NodeFaultError: node of partition 1 is broken"}
    assert all(r.participants == (3,) for r in sink.records)
