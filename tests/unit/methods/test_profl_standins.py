"""ProFL's stand-ins: the basic-layer fit's losses, its warm start from the block, and a fit on
a small fixed task reaching its block's predictions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from profl_core.data import synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.fl.local import LocalConfig, LocalStep
from profl_core.fl.training import train_client
from profl_core.fl.types import ClientTask, ServerState
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec

FLEET = Fleet("hand", (Device(device_id=0, budget_bytes=1),))


def fit4(**options: object) -> tuple[ProFL, ServerState, ClientTask]:
    """A ProFL state at the fit of basic4 (after B4 trained 10 epochs on :func:`data`) and the
    fit's task."""
    spec = native_spec("cnn", width=0.25, num_classes=4)
    model = build_model(spec, generator=torch.Generator().manual_seed(0))
    method = ProFL(ProFLConfig(rounds=10, schedule="fixed", batch_size=16, local_epochs=1,
                               lr=0.05, **options))  # type: ignore[arg-type]
    state = method.init_state(model, np.random.default_rng(0))
    table = {name: 1 for name in method.memory_plan(state)}
    train_b4 = method.configure_round(1, state, FLEET, table, np.random.default_rng(0))[0]
    update = train_client(method.submodel(state, train_b4), data(),
                          replace(train_b4, local_epochs=10),
                          generator=torch.Generator().manual_seed(0), config=LocalConfig())
    state = method.aggregate(1, replace(state, weights={**state.weights, **update.state}), [])
    task = method.configure_round(2, state, FLEET, table, np.random.default_rng(0))[0]
    assert task.submodel == "shrink:4"
    return method, state, task


def data(n: int = 64, seed: int = 1):  # type: ignore[no-untyped-def]
    return synthetic_dataset(num_samples=n, input_shape=(1, 28, 28), num_classes=4,
                             generator=torch.Generator().manual_seed(seed))


def test_the_features_loss_is_the_mse_of_the_standin_against_its_block() -> None:
    method, state, task = fit4(distill_loss="features")
    sub = method.submodel(state, task)
    step = LocalStep.build(sub, task, LocalConfig())
    x = data(16).x
    with torch.no_grad():
        h = sub.run(sub.prefix, x)
        expected = F.mse_loss(sub.modules["om3.basic4"](h), sub.modules["block4"](h))
    loss = step.run(x, None)
    assert task.loss == "features"
    assert float(loss) == float(expected)


def test_the_block_warm_start_copies_the_block_s_first_conv_and_batch_norm() -> None:
    _, state, _ = fit4(standin_init="block")
    w = state.weights
    assert torch.equal(w["om3.basic4.0.weight"], w["block4.0.weight"])
    assert torch.equal(w["om3.basic4.1.weight"], w["block4.1.weight"])
    assert torch.equal(w["om3.basic4.1.running_var"], w["block4.1.running_var"])


def test_a_random_standin_starts_apart_from_the_block() -> None:
    _, state, _ = fit4()
    assert not torch.equal(state.weights["om3.basic4.0.weight"], state.weights["block4.0.weight"])


def agreement(method: ProFL, state: ServerState, task: ClientTask, x: torch.Tensor) -> float:
    """Share of ``x`` on which the stand-in path predicts the real block's class."""
    sub = method.submodel(state, task)
    for module in sub.modules.values():
        module.eval()
    with torch.no_grad():
        h = sub.run(sub.prefix, x)
        student, teacher = sub.run(sub.student, h), sub.run(sub.teacher, h)
    return float((student.argmax(1) == teacher.argmax(1)).float().mean())


def test_a_standin_fit_reaches_its_block_s_predictions_on_a_small_fixed_task() -> None:
    """30 local epochs of the default fit (soft targets at T = 2, lr 0.05) on 64 fixed
    samples: the stand-in agrees with the real block on at least 90% of them (under 60%
    before the fit)."""
    method, state, task = fit4()
    train = data()
    before = agreement(method, state, task, train.x)
    update = train_client(method.submodel(state, task), train, replace(task, local_epochs=30),
                          generator=torch.Generator().manual_seed(0), config=LocalConfig())
    after = agreement(method, replace(state, weights={**state.weights, **update.state}), task,
                      train.x)
    assert before < 0.6
    assert after >= 0.9


def fit_trainables(scope: str) -> dict[str, list[str]]:
    method = ProFL(ProFLConfig(rounds=10, fit_scope=scope))  # type: ignore[arg-type]
    state = method.init_state(build_model(native_spec("cnn", width=0.25)),
                              np.random.default_rng(0))
    return {name: sorted(task.trainable) for name, task in method.memory_plan(state).items()
            if name.startswith("shrink:")}


def test_the_standin_scope_fits_the_basic_layer_only() -> None:
    assert fit_trainables("standin") == {
        "shrink:4": ["om3.basic4"], "shrink:3": ["om2.basic3"], "shrink:2": ["om1.basic2"]}


def test_the_authors_scope_also_fits_the_head_at_the_last_block() -> None:
    assert fit_trainables("authors") == {
        "shrink:4": ["om3.basic4", "om3.head"], "shrink:3": ["om2.basic3"],
        "shrink:2": ["om1.basic2"]}


def test_the_module_scope_fits_the_whole_output_module() -> None:
    assert fit_trainables("module")["shrink:2"] == [
        "om1.basic2", "om1.basic3", "om1.basic4", "om1.head"]


def test_a_deeper_standin_adds_a_stride_one_conv_pair_at_its_width() -> None:
    method = ProFL(ProFLConfig(rounds=10, standin_depth=2))
    state = method.init_state(build_model(native_spec("cnn", width=0.25)),
                              np.random.default_rng(0))
    basic3 = state.structure.modules.get_submodule("om1.basic3")  # type: ignore[union-attr]
    assert len(basic3) == 6
    assert basic3[3].in_channels == basic3[0].out_channels
    assert basic3[3].out_channels == basic3[0].out_channels
    assert basic3[3].stride == (1, 1)
