"""ProFL's stage machine: shrink T..2 then grow 1..T, with the right frozen sets."""

from pathlib import Path

import numpy as np
import pytest
import torch

from profl_core.devices import Device, Fleet
from profl_core.errors import ConfigError
from profl_core.fl.local import LocalConfig, LocalStep
from profl_core.fl.types import ServerState
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.methods.profl_steps import model_weights, plan
from profl_core.models import build_model, native_spec
from tests.conftest import importable_module

T = 4
TABLE = {f"grow:{t}": 100 for t in range(1, T + 1)} | {f"shrink:{t}": 50 for t in range(2, T + 1)}
FLEET = Fleet("hand", tuple(Device(device_id=i, budget_bytes=100) for i in range(3)))


def tiny_model() -> torch.nn.Module:
    """cnn at width 0.25, seeded."""
    spec = native_spec("cnn", width=0.25, num_classes=4)
    return build_model(spec, generator=torch.Generator().manual_seed(0))


def walk(method: ProFL, state: ServerState) -> list[tuple[str, int, str]]:
    """Advance through every phase with empty updates (fixed schedule: one round each)."""
    seen = []
    rnd = 1
    while not method.is_finished(state):
        seen.append(method.position(state))
        state = method.aggregate(rnd, state, [])
        rnd += 1
    return seen


def test_plan_shrinks_back_to_front_then_grows() -> None:
    """Shrink: (train B_t, fit basic<t>) for t = 4, 3, 2; grow: t = 1..4."""
    assert [(p.stage, p.step, p.submodel) for p in plan(4, shrink=True)] == [
        ("shrink", 4, "grow:4"), ("shrink", 4, "shrink:4"),
        ("shrink", 3, "grow:3"), ("shrink", 3, "shrink:3"),
        ("shrink", 2, "grow:2"), ("shrink", 2, "shrink:2"),
        ("grow", 1, "grow:1"), ("grow", 2, "grow:2"), ("grow", 3, "grow:3"), ("grow", 4, "grow:4"),
    ]
    assert [p.submodel for p in plan(4, shrink=False)] == ["grow:1", "grow:2", "grow:3", "grow:4"]


def test_method_walks_the_plan_with_fixed_schedule() -> None:
    """With rounds == number of steps and a fixed schedule each step takes one round."""
    # Prepare
    method = ProFL(ProFLConfig(rounds=10, schedule="fixed"))
    state = method.init_state(tiny_model(), np.random.default_rng(0))
    # Execute
    seen = walk(method, state)
    # Assert
    assert seen == [(p.stage, p.step, p.submodel) for p in plan(T, shrink=True)]


@pytest.mark.parametrize("phase", range(10))
def test_frozen_sets_and_optimizer_params(phase: int) -> None:
    """requires_grad and the optimizer hold exactly the step's trainable modules."""
    # Prepare
    method = ProFL(ProFLConfig(rounds=10, schedule="fixed", per_round=2))
    state = method.init_state(tiny_model(), np.random.default_rng(0))
    for rnd in range(phase):
        state = method.aggregate(rnd + 1, state, [])
    _stage, t, submodel = method.position(state)
    # Execute
    task = method.configure_round(phase + 1, state, FLEET, TABLE, np.random.default_rng(0))[0]
    sub = method.submodel(state, task)
    optimizer = LocalStep.build(sub, task, LocalConfig()).optimizer
    # Assert
    om = "head" if t == T else f"om{t}"
    if submodel.startswith("grow:"):
        expected_trainable = {f"block{t}", om}
        assert sub.student[0] == f"block{t}"
        assert not sub.teacher
        assert task.loss == "ce"
    else:
        expected_trainable = {f"om{t - 1}"}  # the whole output module (fit_scope="module")
        assert sub.student[0] == f"om{t - 1}.basic{t}"
        assert sub.teacher[0] == f"block{t}"
        assert task.loss == "kd"
    assert sub.prefix == tuple(f"block{i}" for i in range(1, t))
    trainable_names = {
        name for name, m in sub.modules.items()
        if any(p.requires_grad for p in m.parameters())
    }
    assert trainable_names == {
        name for name in sub.modules
        if any(name == e or name.startswith(e + ".") for e in expected_trainable)
    }
    assert trainable_names  # something is trained
    expected_params = {
        id(p) for name, m in sub.modules.items() for p in m.parameters()
        if any(name == e or name.startswith(e + ".") for e in expected_trainable)
    }
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == expected_params
    frozen = {name: m for name, m in sub.modules.items() if name not in trainable_names}
    # Batch norm of a frozen module updates only while shrinking, and only in the untrained prefix
    expected_bn_update = set(sub.prefix) if _stage == "shrink" else set()
    assert set(task.bn_update) == expected_bn_update
    assert {name for name, m in frozen.items() if m.training} == expected_bn_update
    frozen = list(frozen.values())
    assert all(not p.requires_grad for m in frozen for p in m.parameters())


def test_fit_step_builds_next_output_module_from_current_one() -> None:
    """Entering 'shrink:t' copies OM_t behind a fresh basic<t> into OM_{t-1}."""
    # Prepare
    method = ProFL(ProFLConfig(rounds=10, schedule="fixed"))
    state = method.init_state(tiny_model(), np.random.default_rng(0))
    fresh = state.weights["om3.basic4.0.weight"].clone()
    # Execute: the block-training round of step 4 ends; the fit of basic4 begins
    state = method.aggregate(1, state, [])
    # Assert
    assert method.position(state) == ("shrink", 4, "shrink:4")
    assert torch.equal(state.weights["om3.head.fc.weight"], state.weights["head.fc.weight"])
    assert torch.equal(state.weights["om3.basic4.0.weight"], fresh)
    state = method.aggregate(2, state, [])  # fit done -> train block 3 with OM_3
    state = method.aggregate(3, state, [])  # -> fit basic3: OM_2 = basic3 + copy of OM_3
    assert torch.equal(state.weights["om2.basic4.0.weight"], state.weights["om3.basic4.0.weight"])
    assert torch.equal(state.weights["om2.head.fc.bias"], state.weights["om3.head.fc.bias"])
    assert set(model_weights(state)) == set(tiny_model().state_dict())


def test_missing_memory_table_entry_is_a_config_error() -> None:
    """A step absent from the memory table stops with its name."""
    method = ProFL(ProFLConfig(rounds=10))
    state = method.init_state(tiny_model(), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="no entry for 'grow:4'"):
        method.configure_round(1, state, FLEET, {}, np.random.default_rng(0))


def test_step_no_device_can_train_stops_with_config_error() -> None:
    """grow:4 needs more than every budget: a clear error naming the step."""
    method = ProFL(ProFLConfig(rounds=10))
    state = method.init_state(tiny_model(), np.random.default_rng(0))
    table = TABLE | {"grow:4": 5 * 2**20}
    with pytest.raises(ConfigError, match=r"can train grow:4: it needs 5\.0 MiB"):
        method.configure_round(1, state, FLEET, table, np.random.default_rng(0))


def test_round_budget_is_split_over_steps() -> None:
    """Fixed schedule with 25 rounds over 10 steps: caps 2,2,2,2,2,3,3,3,3,3."""
    method = ProFL(ProFLConfig(rounds=25, schedule="fixed"))
    state = method.init_state(tiny_model(), np.random.default_rng(0))
    seen = walk(method, state)
    counts = [seen.count(p) for p in dict.fromkeys(seen)]
    # grow:t appears in both stages under different stage labels, so count by (stage, submodel)
    assert sum(counts) == 25
    assert counts == [2, 2, 2, 2, 2, 3, 3, 3, 3, 3]


def test_em_ends_steps_and_the_last_step_spends_the_remaining_budget() -> None:
    """Weights that never move have EM 0: every step but the last ends by ``em`` at the
    earliest round (window 2 + 2 values - 1 = 3); the last one runs to the budget (``cap``)."""
    method = ProFL(ProFLConfig(rounds=100, schedule="em", em_window=2, em_evaluation_number=2))
    state = method.init_state(tiny_model(), np.random.default_rng(0))
    ends: list[tuple[int, str]] = []
    for rnd in range(1, 101):
        state = method.aggregate(rnd, state, [])
        reason = method.round_metrics(state)["step_end"]
        if reason is not None:
            ends.append((rnd, str(reason)))
    assert ends[:9] == [(3 * k, "em") for k in range(1, 10)]
    assert ends[9:] == [(100, "cap")]
    assert method.is_finished(state)


def test_a_block_without_parameters_is_refused_in_one_line(tmp_path: Path) -> None:
    source = """
        from torch import nn

        def build(num_classes):
            return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                 nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                               nn.Linear(8, num_classes)))
        """
    with importable_module(tmp_path, "relu_block_model", source):
        model = build_model(native_spec("relu_block_model:build", in_channels=1,
                                        input_size=28))
        method = ProFL(ProFLConfig(rounds=4))
        with pytest.raises(ConfigError) as info:
            method.init_state(model, np.random.default_rng(0))
    assert "block2 of the model has no parameters" in str(info.value)
    assert "\n" not in str(info.value)
