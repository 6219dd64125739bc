"""SLT (Successive Layer Training): the stage schedule, the frozen prefix, the memory plan's
cases and the aggregation of the trained part."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from profl_core.data import synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.errors import ConfigError
from profl_core.fl.local import LocalConfig
from profl_core.fl.training import train_client
from profl_core.fl.types import ClientUpdate, ServerState
from profl_core.memory import measure
from profl_core.memory.case_text import case_from_text
from profl_core.memory.report import MemoryReport
from profl_core.memory.table import method_table
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.methods.slt import SLT, SLTConfig, stage_ends
from profl_core.models import build_model, native_spec

T = 4
SPEC = native_spec("cnn", width=0.25, num_classes=4)
BATCH = 8
TABLE = {f"slt:{t}": 100 for t in range(1, T + 1)}
FLEET = Fleet("hand", tuple(Device(device_id=i, budget_bytes=100) for i in range(3)))


def fresh_state(method: SLT) -> ServerState:
    """The method's initial state on a seeded cnn (4 blocks)."""
    model = build_model(SPEC, generator=torch.Generator().manual_seed(0))
    return method.init_state(model, np.random.default_rng(0))


def at_stage(method: SLT, t: int) -> ServerState:
    """A state whose next round trains stage t (empty rounds up to it)."""
    state = fresh_state(method)
    rnd = 1
    while method.position(state)[1] < t:
        state = method.aggregate(rnd, state, [])
        rnd += 1
    return state


@functools.cache
def reports(name: str, probe: str) -> dict[str, MemoryReport]:
    """The memory table of ``slt`` or ``profl`` on SPEC (measured once per session)."""
    method = (SLT(SLTConfig(rounds=8, batch_size=BATCH)) if name == "slt"
              else ProFL(ProFLConfig(rounds=8, batch_size=BATCH)))
    return method_table(method, SPEC, batch_size=BATCH, probe=probe)


# ----------------------------------------------------------------- the schedule


def test_stage_ends_follow_the_cumulative_shares_of_the_stage_sizes() -> None:
    """Sizes 1, 2, 3, 6 over 60 rounds: cumulative shares 1/12, 3/12, 6/12, 12/12."""
    assert stage_ends([1, 2, 3, 6], 60) == (5, 15, 30, 60)


def test_every_stage_gets_a_round_when_the_budget_allows() -> None:
    """Shares that floor to 0 rounds are raised to one round each (10 rounds, 3 stages)."""
    assert stage_ends([1, 1, 100], 10) == (1, 2, 10)


def test_a_budget_below_the_number_of_stages_skips_stages_like_the_code() -> None:
    """With 2 rounds and 3 stages the floors stand: the first two stages get none."""
    assert stage_ends([1, 1, 100], 2) == (0, 0, 2)


def test_method_walks_the_equal_schedule_round_by_round() -> None:
    """10 rounds, 4 stages, equal shares: ends 2, 5, 7, 10 (hand-written per round)."""
    method = SLT(SLTConfig(rounds=10, stage_rounds="equal"))
    state = fresh_state(method)
    seen = []
    for rnd in range(1, 11):
        seen.append(method.position(state)[2])
        state = method.aggregate(rnd, state, [])
    assert seen == ["slt:1", "slt:1", "slt:2", "slt:2", "slt:2",
                    "slt:3", "slt:3", "slt:4", "slt:4", "slt:4"]
    assert method.is_finished(state)


def test_params_schedule_shares_are_the_trained_state_dict_sizes() -> None:
    """The default schedule's ends are those of the sizes counted on the model itself: block
    t, the stand-ins of the blocks after it (``output_module(1)``) and the head."""
    model = build_model(SPEC, generator=torch.Generator().manual_seed(0))
    standins = model.output_module(1)

    def count(module: torch.nn.Module) -> int:
        return sum(v.numel() for v in module.state_dict().values())

    sizes = [count(model.block(t - 1)) + count(model.head)
             + sum(count(standins.get_submodule(f"basic{k}")) for k in range(t + 1, T + 1))
             for t in range(1, T + 1)]
    state = fresh_state(SLT(SLTConfig(rounds=60)))
    assert state.structure.ends == stage_ends(sizes, 60)


def test_a_stage_end_is_recorded_as_fixed() -> None:
    """The round that ends stage 1 of the equal schedule (round 2) says ``step_end: fixed``."""
    method = SLT(SLTConfig(rounds=10, stage_rounds="equal"))
    state = method.aggregate(1, fresh_state(method), [])
    assert method.round_metrics(state) == {"step_end": None}
    state = method.aggregate(2, state, [])
    assert method.round_metrics(state) == {"step_end": "fixed"}


# ----------------------------------------------------------------- the client step


@pytest.mark.usefixtures("one_thread")
def test_frozen_blocks_get_no_update_in_a_client_step() -> None:
    """Stage 3: blocks 1 and 2 are bit-identical after local training; block 3 moved."""
    method = SLT(SLTConfig(rounds=8, stage_rounds="equal", per_round=1, local_epochs=1,
                           batch_size=BATCH, lr=0.1))
    state = at_stage(method, 3)
    task = method.configure_round(1, state, FLEET, TABLE, np.random.default_rng(0))[0]
    sub = method.submodel(state, task)
    before = {n: {k: v.clone() for k, v in sub.modules[n].state_dict().items()}
              for n in ("block1", "block2", "block3")}
    data = synthetic_dataset(num_samples=16, input_shape=(1, 28, 28), num_classes=4,
                             generator=torch.Generator().manual_seed(1))
    update = train_client(sub, data, task, generator=torch.Generator().manual_seed(2),
                          config=LocalConfig())
    after = {n: sub.modules[n].state_dict() for n in ("block1", "block2", "block3")}
    assert all(torch.equal(v, after["block1"][k]) for k, v in before["block1"].items())
    assert all(torch.equal(v, after["block2"][k]) for k, v in before["block2"].items())
    assert not all(torch.equal(v, after["block3"][k]) for k, v in before["block3"].items())
    assert not any(k.startswith(("block1.", "block2.")) for k in update.state)


def test_a_stage_trains_its_block_the_standins_after_it_and_the_head() -> None:
    """Stage 2 of 4: B_2, S_3, S_4 and the head trained; B_1 the frozen prefix."""
    method = SLT(SLTConfig(rounds=8))
    sub = method.submodel(fresh_state(method), method.memory_plan(fresh_state(method))["slt:2"])
    assert sub.trainable == {"block2", "scaled.basic3", "scaled.basic4", "head"}
    assert sub.prefix == ("block1",)
    assert sub.student == ("block2", "scaled.basic3", "scaled.basic4", "head")


def test_only_devices_that_fit_the_stage_are_selected() -> None:
    """Stage 1 needs 150 bytes: only the device with a 200-byte budget fits."""
    fleet = Fleet("mixed", (Device(device_id=0, budget_bytes=100),
                            Device(device_id=1, budget_bytes=200)))
    method = SLT(SLTConfig(rounds=8, per_round=2))
    tasks = method.configure_round(1, fresh_state(method), fleet, TABLE | {"slt:1": 150},
                                   np.random.default_rng(0))
    assert [task.client_id for task in tasks] == [1]
    assert tasks[0].required_bytes == 150


# ----------------------------------------------------------------- the memory plan's cases


def test_memory_plan_holds_one_case_per_stage() -> None:
    method = SLT(SLTConfig(rounds=8))
    assert list(method.memory_plan(fresh_state(method))) == ["slt:1", "slt:2", "slt:3", "slt:4"]


@pytest.mark.parametrize("t", range(1, T + 1))
def test_a_stage_peak_is_profls_grow_peak_of_the_same_sub_model(t: int) -> None:
    """Stage t is ProFL's grow:t (B_t plus the same stand-ins and head on B_1 .. B_{t-1})."""
    slt, profl = reports("slt", "predict")[f"slt:{t}"], reports("profl", "predict")[f"grow:{t}"]
    assert slt.tensor_peak_bytes == profl.tensor_peak_bytes
    assert slt.heap_peak_bytes == profl.heap_peak_bytes


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("t", range(1, T + 1))
def test_a_stage_peak_predicted_equals_dispatched(t: int) -> None:
    """The fake-tensor prediction equals the real step's tensor peak to the byte."""
    predicted = reports("slt", "predict")[f"slt:{t}"].tensor_peak_bytes
    assert predicted == reports("slt", "dispatch")[f"slt:{t}"].tensor_peak_bytes


def test_a_stage_case_text_is_measured_as_the_methods_step() -> None:
    """``slt:3`` as a memory case (kind registered by SLT) measures the memory plan's task."""
    case = case_from_text(SPEC, "slt:3", batch_size=BATCH)
    assert measure(case, probe="predict").tensor_peak_bytes == (
        reports("slt", "predict")["slt:3"].tensor_peak_bytes)


# ----------------------------------------------------------------- aggregation


def test_aggregation_averages_only_the_trained_part() -> None:
    """Two clients of stage 2 send 1s (1 example) and 3s (3 examples): the trained keys become
    (1 * 1 + 3 * 3) / 4 = 2.5; block 1 keeps its weights."""
    method = SLT(SLTConfig(rounds=8, stage_rounds="equal"))
    state = at_stage(method, 2)
    trained = [k for k in state.weights if k.startswith(
        ("block2.", "scaled.basic3.", "scaled.basic4.", "head."))
        and state.weights[k].is_floating_point()]
    updates = [ClientUpdate(client_id=i, num_examples=n,
                            state={k: torch.full_like(state.weights[k], value) for k in trained})
               for i, (n, value) in enumerate([(1, 1.0), (3, 3.0)])]
    new = method.aggregate(3, state, updates)
    assert all(torch.all(new.weights[k] == 2.5) for k in trained)
    assert all(torch.equal(new.weights[k], v) for k, v in state.weights.items()
               if k.startswith("block1."))


def test_model_weights_leave_out_the_standins() -> None:
    method = SLT(SLTConfig(rounds=8))
    model = build_model(SPEC)
    assert set(method.model_weights(fresh_state(method))) == set(model.state_dict())


# ----------------------------------------------------------------- config


def test_config_rejects_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="nope"):
        SLTConfig.from_dict({"rounds": 8, "nope": 1})


def test_config_rejects_an_unknown_stage_rounds_rule() -> None:
    with pytest.raises(ConfigError, match="stage_rounds"):
        SLTConfig(rounds=8, stage_rounds="em")  # type: ignore[arg-type]
