"""FeDepth: per-client block groups fitted to budgets, the parameter-free link, the groups
trained one after another, the memory plan's cases, FedAvg and a tiny run that learns."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

from profl_core.data import partition, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.errors import ConfigError
from profl_core.fl import FederatedData, RunConfig, run_federated
from profl_core.fl.client import train_task
from profl_core.fl.local import LocalConfig
from profl_core.fl.training import train_client
from profl_core.fl.types import ClientUpdate, ServerState
from profl_core.memory import measure
from profl_core.memory.case_text import case_from_text
from profl_core.memory.report import MemoryReport
from profl_core.memory.table import method_table
from profl_core.methods.fedepth import (
    FeDepth,
    FeDepthConfig,
    Group,
    Link,
    fit_groups,
    groups_of,
    link,
    smallest_need,
    submodel_name,
)
from profl_core.models import build_model, native_spec
from tests.integration.tiny_fl import ListSink

T = 4
SPEC = native_spec("cnn", width=0.25, num_classes=4)
BATCH = 8
# A hand table (bytes) of the 10 group steps of a 4-block model: the later a group starts the
# less it holds; a longer group holds more.
HAND: dict[Group, int] = {
    (1, 1): 50, (1, 2): 70, (1, 3): 85, (1, 4): 100,
    (2, 2): 30, (2, 3): 45, (2, 4): 60,
    (3, 3): 20, (3, 4): 40,
    (4, 4): 35,
}
HAND_TABLE = {submodel_name(g): v for g, v in HAND.items()}


def fresh_state(method: FeDepth, spec=SPEC) -> ServerState:
    """The method's initial state on a seeded model."""
    model = build_model(spec, generator=torch.Generator().manual_seed(0))
    return method.init_state(model, np.random.default_rng(0))


@functools.cache
def reports(probe: str, model: str = "cnn") -> dict[str, MemoryReport]:
    """FeDepth's memory table (every group step) on a small model, measured once."""
    spec = SPEC if model == "cnn" else native_spec(model, width=0.125, num_classes=4,
                                                   input_size=8)
    return method_table(FeDepth(FeDepthConfig(rounds=1, batch_size=BATCH)), spec,
                        batch_size=BATCH, probe=probe)


def oracle_groups(needs: dict[Group, int], blocks: int, budget: int) -> tuple[Group, ...] | None:
    """Brute force: every way to cut 1..T into consecutive groups; the fewest groups that all
    fit, and among those the one whose group ends are latest (compared in order)."""
    best: tuple[Group, ...] | None = None
    for cuts in itertools.product([False, True], repeat=blocks - 1):
        ends = [b for b, cut in zip(range(1, blocks), cuts, strict=True) if cut] + [blocks]
        starts = [1] + [e + 1 for e in ends[:-1]]
        groups = tuple(zip(starts, ends, strict=True))
        if any(needs[g] > budget for g in groups):
            continue
        if best is None or (len(groups), [-b for _, b in groups]) < (
                len(best), [-b for _, b in best]):
            best = groups
    return best


# ----------------------------------------------------------------- grouping


@pytest.mark.parametrize(("budget", "groups"), [
    (100, ((1, 4),)),                  # the whole model fits: end to end
    (99, ((1, 3), (4, 4))),            # 1-3 (85) + 4 (35); 1-2 + 3-4 is two groups too
    (84, ((1, 2), (3, 4))),            # 1-3 no longer fits
    (69, ((1, 1), (2, 4))),            # 50 + 60
    (59, ((1, 1), (2, 3), (4, 4))),    # 2-4 (60) no longer fits
    (50, ((1, 1), (2, 3), (4, 4))),    # 50, 45, 35
    (44, None),                        # block 1 alone needs 50
])
def test_a_client_gets_the_fewest_groups_that_fit_its_budget(budget, groups) -> None:
    """Hand-computed fits of the hand table: fewest groups, each ending as late as it can."""
    assert fit_groups(HAND, T, budget) == groups


def test_the_smallest_need_is_the_cheapest_grouping_largest_group() -> None:
    """Block 1 alone (50) is in every grouping's reach only from 50: the fleet floor."""
    assert smallest_need(HAND, T) == 50


@pytest.mark.parametrize("peak", ["tensor_peak_bytes", "required_bytes"])
def test_the_fit_on_measured_peaks_is_the_brute_force_fit(peak: str) -> None:
    """On the cnn's measured group peaks (tensor, and the heap-covering required bytes), at
    every budget that equals one of them, the grouping is the brute-force oracle's."""
    needs = {g: getattr(reports("predict")[submodel_name(g)], peak) for g in groups_of(T)}
    budgets = sorted(set(needs.values()))
    assert [fit_groups(needs, T, b) for b in budgets] == [
        oracle_groups(needs, T, b) for b in budgets]


def test_each_client_is_given_its_own_groups_and_the_largest_of_their_needs() -> None:
    """Budgets 100, 84 and 44: one group end to end; 1-2 then 3-4 (needs 70 and 40); none."""
    fleet = Fleet("hand", (Device(device_id=0, budget_bytes=100),
                           Device(device_id=1, budget_bytes=84),
                           Device(device_id=2, budget_bytes=44)))
    method = FeDepth(FeDepthConfig(rounds=1, per_round=3))
    tasks = method.configure_round(1, fresh_state(method), fleet, HAND_TABLE,
                                   np.random.default_rng(0))
    assert [t.client_id for t in tasks] == [0, 1]
    assert [s.submodel for s in tasks[1].steps] == ["fedepth:102", "fedepth:304"]
    assert tasks[1].required_bytes == 70
    assert [s.required_bytes for s in tasks[1].steps] == [70, 40]


def test_a_full_budget_client_trains_end_to_end_in_one_step() -> None:
    fleet = Fleet("hand", (Device(device_id=0, budget_bytes=100),))
    method = FeDepth(FeDepthConfig(rounds=1, per_round=1))
    task = method.configure_round(1, fresh_state(method), fleet, HAND_TABLE,
                                  np.random.default_rng(0))[0]
    assert task.submodel == "fedepth:104"
    assert task.steps == ()
    assert task.trainable == {"block1", "block2", "block3", "block4", "head"}
    sub = method.submodel(fresh_state(method), task)
    assert sub.prefix == ()
    assert sub.student == ("block1", "block2", "block3", "block4", "head")


def test_the_eligible_share_is_the_share_that_fits_some_grouping() -> None:
    fleet = Fleet("hand", tuple(Device(device_id=i, budget_bytes=b)
                                for i, b in enumerate([44, 49, 50, 100])))
    method = FeDepth(FeDepthConfig(rounds=1))
    assert method.eligible_share(fresh_state(method), fleet, HAND_TABLE) == 0.5


def test_a_fleet_that_fits_no_grouping_is_refused_in_one_line() -> None:
    fleet = Fleet("tiny", (Device(device_id=0, budget_bytes=44),))
    method = FeDepth(FeDepthConfig(rounds=1))
    with pytest.raises(ConfigError, match="can train fedepth"):
        method.fit_fleet(fresh_state(method), fleet, HAND_TABLE)


# ----------------------------------------------------------------- the link


def test_a_group_skips_the_later_blocks_with_a_link_to_the_head() -> None:
    """Group 2-3 of 4: block 1 frozen, blocks 2-3 and the head trained, link3 in between."""
    method = FeDepth(FeDepthConfig(rounds=1))
    state = fresh_state(method)
    sub = method.submodel(state, method.memory_plan(state)["fedepth:203"])
    assert sub.prefix == ("block1",)
    assert sub.student == ("block2", "block3", "link3", "head")
    assert sub.trainable == {"block2", "block3", "head"}


@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_every_link_is_parameter_free_and_gives_the_heads_input_shape(model: str) -> None:
    spec = native_spec(model, width=0.125, num_classes=4)
    built = build_model(spec)
    shapes = built.block_output_shapes()
    state = fresh_state(FeDepth(FeDepthConfig(rounds=1)), spec)
    for b in range(1, built.num_blocks):
        module = state.structure.modules.get_submodule(f"link{b}")
        assert list(module.parameters()) == []
        assert list(module.buffers()) == []
        out = module(torch.zeros((2, *shapes[b - 1])))
        assert tuple(out.shape) == (2, *shapes[-1])


def test_the_link_subsamples_and_pads_channels_with_zeros_on_both_sides() -> None:
    """(2, 4, 4) -> (5, 2, 2): rows/columns 0 and 2, one zero channel before, two after."""
    x = torch.arange(32.0).reshape(1, 2, 4, 4)
    out = link((2, 4, 4), (5, 2, 2), model="hand", block=1)(x)
    expected = torch.zeros(1, 5, 2, 2)
    expected[0, 1:3] = x[0, :, ::2, ::2]
    assert torch.equal(out, expected)


def test_the_link_pools_when_no_stride_fits() -> None:
    """7 -> 4 rows has no whole stride: adaptive average pooling."""
    x = torch.randn(1, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    out = Link((3, 7, 7), (3, 4, 4))(x)
    assert torch.equal(out, torch.nn.functional.adaptive_avg_pool2d(x, (4, 4)))


def test_the_link_of_equal_shapes_is_the_identity() -> None:
    assert isinstance(link((16, 64), (16, 64), model="hand", block=1), torch.nn.Identity)


def test_a_link_that_would_drop_channels_is_refused() -> None:
    with pytest.raises(ConfigError, match="no parameter-free link from block2"):
        link((8, 4, 4), (4, 2, 2), model="hand", block=2)


# ----------------------------------------------------------------- the client's groups


def tiny_data():
    return synthetic_dataset(num_samples=16, input_shape=(1, 28, 28), num_classes=4,
                             generator=torch.Generator().manual_seed(1))


@pytest.mark.usefixtures("one_thread")
def test_frozen_blocks_get_no_update_in_a_group_step() -> None:
    """Group 3-4: blocks 1 and 2 are bit-identical after local training; block 3 moved."""
    method = FeDepth(FeDepthConfig(rounds=1, local_epochs=1, batch_size=BATCH, lr=0.1))
    state = fresh_state(method)
    task = method.memory_plan(state)["fedepth:304"]
    sub = method.submodel(state, task)
    before = {n: {k: v.clone() for k, v in sub.modules[n].state_dict().items()}
              for n in ("block1", "block2", "block3")}
    update = train_client(sub, tiny_data(), task, generator=torch.Generator().manual_seed(2),
                          config=LocalConfig())
    after = {n: sub.modules[n].state_dict() for n in ("block1", "block2", "block3")}
    assert all(torch.equal(v, after["block1"][k]) for k, v in before["block1"].items())
    assert all(torch.equal(v, after["block2"][k]) for k, v in before["block2"].items())
    assert not all(torch.equal(v, after["block3"][k]) for k, v in before["block3"].items())
    assert not any(k.startswith(("block1.", "block2.")) for k in update.state)


@pytest.mark.usefixtures("one_thread")
def test_a_clients_groups_train_one_after_another() -> None:
    """Groups 1-2 then 3-4: the update's blocks 1-2 are what group 1-2 alone trains (group
    3-4 leaves them frozen); group 3-4 starts from them and trains blocks 3-4 and the head
    further."""
    method = FeDepth(FeDepthConfig(rounds=1, local_epochs=1, batch_size=BATCH, lr=0.1))
    state = fresh_state(method)
    task = method.client_task(state.structure, [(1, 2), (3, 4)], 0, HAND)
    update = train_task(method, state, task, tiny_data(),
                        generator=torch.Generator().manual_seed(2), config=LocalConfig())
    first = method.memory_plan(state)["fedepth:102"]
    alone = train_client(method.submodel(state, first), tiny_data(), first,
                         generator=torch.Generator().manual_seed(2), config=LocalConfig())
    early = [k for k in alone.state if k.startswith(("block1.", "block2."))]
    assert all(torch.equal(update.state[k], alone.state[k]) for k in early)
    assert set(update.state) == set(state.weights)
    assert not torch.equal(update.state["head.fc.weight"], alone.state["head.fc.weight"])
    assert update.task is task


# ----------------------------------------------------------------- the memory plan's cases


def test_memory_plan_holds_every_group() -> None:
    method = FeDepth(FeDepthConfig(rounds=1))
    assert list(method.memory_plan(fresh_state(method))) == [
        "fedepth:101", "fedepth:102", "fedepth:103", "fedepth:104", "fedepth:202",
        "fedepth:203", "fedepth:204", "fedepth:303", "fedepth:304", "fedepth:404"]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", [submodel_name(g) for g in groups_of(T)])
def test_a_group_peak_predicted_equals_dispatched(name: str) -> None:
    """The fake-tensor prediction equals the real step's tensor peak to the byte (cnn)."""
    assert (reports("predict")[name].tensor_peak_bytes
            == reports("dispatch")[name].tensor_peak_bytes)


@pytest.mark.usefixtures("one_thread")
def test_resnet18_group_peaks_predicted_equal_dispatched() -> None:
    """The same on a small resnet18 (4 blocks, width 0.125, 8x8 input), every group."""
    predicted, dispatched = reports("predict", "resnet18"), reports("dispatch", "resnet18")
    assert {k: r.tensor_peak_bytes for k, r in predicted.items()} == {
        k: r.tensor_peak_bytes for k, r in dispatched.items()}


def test_a_group_case_text_is_measured_as_the_methods_step() -> None:
    """``fedepth:203`` as a memory case (kind registered by FeDepth) measures the plan's task."""
    case = case_from_text(SPEC, "fedepth:203", batch_size=BATCH)
    assert measure(case, probe="predict").tensor_peak_bytes == (
        reports("predict")["fedepth:203"].tensor_peak_bytes)


def test_a_group_case_text_outside_the_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="fedepth:T with T one of 101"):
        case_from_text(SPEC, "fedepth:205", batch_size=BATCH)


# ----------------------------------------------------------------- aggregation, config


def test_each_entry_is_averaged_over_the_clients_that_trained_it() -> None:
    """Client 0 (1 example) sends block 1 and the head as 1s; client 1 (3 examples) block 4 and
    the head as 3s: block 1 becomes 1, block 4 becomes 3, the head (1 + 9) / 4 = 2.5."""
    method = FeDepth(FeDepthConfig(rounds=1))
    state = fresh_state(method)
    w = state.weights
    keys = {0: [k for k in w if k.startswith(("block1.", "head."))],
            1: [k for k in w if k.startswith(("block4.", "head."))]}
    updates = [ClientUpdate(client_id=i, num_examples=n, state={
        k: torch.full_like(w[k], v) for k in keys[i] if w[k].is_floating_point()})
        for i, n, v in [(0, 1, 1.0), (1, 3, 3.0)]]
    new = method.aggregate(1, state, updates).weights
    assert torch.all(new["block1.0.weight"] == 1.0)
    assert torch.all(new["block4.0.weight"] == 3.0)
    assert torch.all(new["head.fc.weight"] == 2.5)
    assert torch.equal(new["block2.0.weight"], w["block2.0.weight"])


def test_config_rejects_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="groups"):
        FeDepthConfig.from_dict({"rounds": 1, "groups": 2})


# ----------------------------------------------------------------- a tiny run


@pytest.mark.usefixtures("one_thread")
def test_fedepth_learns_a_tiny_problem_within_every_budget() -> None:
    """4 classes (chance 0.25), 8 clients with budgets 50..100 on the hand table (groupings of
    1 to 3 groups): after 4 rounds the model reaches chance + 0.2 = 0.45 and every participant's
    required bytes fit its budget."""
    spec = native_spec("cnn", width=0.25, num_classes=4, input_size=8)
    train = synthetic_dataset(num_samples=320, input_shape=(1, 8, 8), num_classes=4,
                              generator=torch.Generator().manual_seed(0), noise=1.0)
    test = synthetic_dataset(num_samples=200, input_shape=(1, 8, 8), num_classes=4,
                             generator=torch.Generator().manual_seed(0), noise=1.0)
    parts = partition("iid", train.y.numpy(), 8, np.random.default_rng(0))
    data = FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)
    fleet = Fleet("rel", tuple(Device(device_id=i, budget_bytes=int(f))
                               for i, f in enumerate(np.linspace(50, 100, 8))))
    method = FeDepth(FeDepthConfig(rounds=4, per_round=4, local_epochs=2, batch_size=16,
                                   lr=0.05))
    sink = ListSink()
    run_federated(method, fleet, data, RunConfig(rounds=4, seed=0), model=build_model(
        spec, generator=torch.Generator().manual_seed(1)), memory_table=HAND_TABLE, sink=sink)
    needs = [(cid, need) for r in sink.records
             for cid, need in zip(r.participants, r.required_bytes, strict=True)]
    assert all(need <= fleet.devices[cid].budget_bytes for cid, need in needs)
    assert sink.records[-1].accuracy >= 0.45
