"""NeuLite: the curriculum loss (Curriculum Mentor), the harmonized last layer (Training
Harmonizer), the stage schedule, the memory plan's cases and a tiny run that learns."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import Tensor

from profl_core.data import partition, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.errors import ConfigError
from profl_core.fl import FederatedData, RunConfig, run_federated
from profl_core.fl.local import LocalConfig
from profl_core.fl.training import train_client
from profl_core.fl.types import ServerState
from profl_core.memory import measure
from profl_core.memory.case_text import case_from_text
from profl_core.memory.report import MemoryReport
from profl_core.memory.table import method_table
from profl_core.methods.neulite import (
    NeuLite,
    NeuLiteConfig,
    curriculum_loss,
    curriculum_weights,
    last_layer,
    normalized_hsic,
    stage_table,
)
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec
from tests.integration.tiny_fl import ListSink

T = 4
SPEC = native_spec("cnn", width=0.25, num_classes=4)
TINY = native_spec("cnn", width=0.25, num_classes=4, input_size=8)
BATCH = 8
TABLE = {f"neulite:{t}": 100 for t in range(1, T + 1)}
FLEET = Fleet("hand", tuple(Device(device_id=i, budget_bytes=100) for i in range(3)))


def fresh_state(method: NeuLite, spec=SPEC) -> ServerState:
    """The method's initial state on a seeded cnn (4 blocks)."""
    model = build_model(spec, generator=torch.Generator().manual_seed(0))
    return method.init_state(model, np.random.default_rng(0))


def at_stage(method: NeuLite, t: int, spec=SPEC) -> ServerState:
    """A state whose next round trains stage t (empty rounds up to it)."""
    state = fresh_state(method, spec)
    rnd = 1
    while method.position(state)[1] != t:
        state = method.aggregate(rnd, state, [])
        rnd += 1
    return state


@functools.cache
def reports(probe: str) -> dict[str, MemoryReport]:
    """NeuLite's memory table on SPEC (measured once per session)."""
    return method_table(NeuLite(NeuLiteConfig(rounds=8, batch_size=BATCH)), SPEC,
                        batch_size=BATCH, probe=probe)


# ----------------------------------------------------------------- the oracle


def oracle_nhsic(a: Tensor, b: Tensor, sigma: float) -> float:
    """Normalized HSIC written out: Gaussian kernels from ``torch.cdist``, double centring
    ``H K H``, HSIC(a, b) = sum((H Ka H) * Kb) / m^2."""
    def gram(v: Tensor) -> Tensor:
        v = v.flatten(1).double()
        return torch.exp(-torch.cdist(v, v) ** 2 / (2 * sigma ** 2 * v.shape[1]))

    def hsic(ka: Tensor, kb: Tensor) -> float:
        m = ka.shape[0]
        h = torch.eye(m, dtype=torch.float64) - torch.full((m, m), 1.0 / m, dtype=torch.float64)
        return float((h @ ka @ h * kb).sum()) / m ** 2

    ka, kb = gram(a), gram(b)
    return hsic(ka, kb) / (hsic(ka, ka) * hsic(kb, kb)) ** 0.5


def oracle_ce(logits: Tensor, labels: Tensor) -> float:
    """Mean cross-entropy: -log softmax at the label, written out."""
    logp = logits.double() - torch.logsumexp(logits.double(), dim=1, keepdim=True)
    return float(-logp[torch.arange(len(labels)), labels].mean())


# ----------------------------------------------------------------- the Curriculum Mentor


def test_curriculum_loss_is_ce_minus_the_weighted_hsic_terms() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, x, z = (torch.randn(6, 4, generator=gen), torch.randn(6, 1, 4, 4, generator=gen),
                    torch.randn(6, 3, 2, 2, generator=gen))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    expected = (oracle_ce(logits, labels) - 0.3 * oracle_nhsic(z, x, 5.0)
                - 0.7 * oracle_nhsic(logits, onehot, 5.0))
    got = curriculum_loss(logits, labels, x, z, lx=0.3, ly=0.7, sigma=5.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_normalized_hsic_of_a_batch_with_itself_is_one() -> None:
    v = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert float(normalized_hsic(v, v, 5.0)) == pytest.approx(1.0, rel=1e-5)


def test_a_constant_kernel_gives_zero_not_nan() -> None:
    """All labels one class: the centred label kernel is 0, so the term is 0 (the code: NaN)."""
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    onehot = torch.nn.functional.one_hot(torch.zeros(4, dtype=torch.long), 3).float()
    assert float(normalized_hsic(logits, onehot, 5.0)) == 0.0


def test_curriculum_weights_move_from_the_input_to_the_labels() -> None:
    """T = 4, lambda_x = 0.3, lambda_y = 0.6: s = 0, 1/3, 2/3, 1."""
    table = [curriculum_weights(t, 4, 0.3, 0.6) for t in range(1, 5)]
    expected = [(0.3, 0.0), (0.2, 0.2), (0.1, 0.4), (0.0, 0.6)]
    assert table == [pytest.approx(pair) for pair in expected]


def test_a_stage_loss_on_a_tiny_model_matches_the_hand_computation() -> None:
    """Stage 2 of 4 on an 8x8 cnn: the step's loss is CE of the logits minus
    lx_2 nHSIC(head input, raw x) minus ly_2 nHSIC(logits, onehot y), with the head input
    computed module by module here."""
    method = NeuLite(NeuLiteConfig(rounds=8, lambda_x=0.3, lambda_y=0.6))
    state = fresh_state(method, TINY)
    sub = method.submodel(state, method.memory_plan(state)["neulite:2"])
    for module in sub.modules.values():
        module.eval()
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 1, 8, 8, generator=gen), torch.tensor([0, 1, 2, 3, 3, 2])
    with torch.no_grad():
        loss = sub.criterion(sub.output(x), y)
        m = sub.modules
        z = m["om2.basic4"](m["om2.basic3"](m["block2"](m["block1"](x))))
        logits = m["om2.head"](z)
    lx, ly = 0.3 * 2 / 3, 0.6 / 3
    onehot = torch.nn.functional.one_hot(y, 4).double()
    expected = (oracle_ce(logits, y) - lx * oracle_nhsic(z, x, 5.0)
                - ly * oracle_nhsic(logits, onehot, 5.0))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------- the Training Harmonizer


def test_the_last_layer_of_a_block_is_its_last_conv_and_the_norm_after_it() -> None:
    """cnn block: conv 0, BN 1, ReLU 2, conv 3, BN 4, ReLU 5; resnet18 block 2: the second
    unit's conv2 and bn2 (the code's ``conv2``/``bn2`` of the last residual unit)."""
    assert last_layer(build_model(SPEC).block(1)) == ("3", "4")
    assert last_layer(build_model(native_spec("resnet18")).block(1)) == ("1.conv2", "1.bn2")


def test_a_stage_trains_its_block_its_output_module_and_the_last_layer_before_it() -> None:
    method = NeuLite(NeuLiteConfig(rounds=8))
    state = fresh_state(method)
    assert method.memory_plan(state)["neulite:3"].trainable == {
        "block3", "om3.basic4", "om3.head", "block2.3", "block2.4"}
    assert method.memory_plan(state)["neulite:1"].trainable == {
        "block1", "om1.basic2", "om1.basic3", "om1.basic4", "om1.head"}
    assert method.memory_plan(state)["neulite:4"].trainable == {"block4", "head", "block3.3",
                                                                "block3.4"}


def test_without_harmonizing_the_previous_block_is_frozen() -> None:
    method = NeuLite(NeuLiteConfig(rounds=8, harmonize=False))
    state = fresh_state(method)
    assert method.memory_plan(state)["neulite:3"].trainable == {"block3", "om3.basic4",
                                                                "om3.head"}


@pytest.mark.usefixtures("one_thread")
def test_a_harmonizing_step_moves_only_the_stage_and_the_last_layer_before_it() -> None:
    """Stage 3: block 1 and block 2 but its last conv and BN (3, 4) are bit-identical after
    local training; block2.3 and block 3 moved; the update carries exactly the trained keys."""
    method = NeuLite(NeuLiteConfig(rounds=8, per_round=1, local_epochs=1, batch_size=BATCH,
                                   lr=0.1))
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
    kept = {k for k in before["block2"] if not k.startswith(("3.", "4."))}
    assert all(torch.equal(v, after["block1"][k]) for k, v in before["block1"].items())
    assert all(torch.equal(before["block2"][k], after["block2"][k]) for k in kept)
    assert not torch.equal(before["block2"]["3.weight"], after["block2"]["3.weight"])
    assert not torch.equal(before["block3"]["0.weight"], after["block3"]["0.weight"])
    trained = {k for k in state.weights
               if k.startswith(("block3.", "om3.", "block2.3.", "block2.4."))}
    assert set(update.state) == trained


# ----------------------------------------------------------------- the schedule


def test_cyclic_schedule_is_the_codes_round_robin() -> None:
    assert stage_table(10, 4, "cyclic") == (1, 2, 3, 4, 1, 2, 3, 4, 1, 2)


def test_sequential_schedule_gives_equal_consecutive_shares() -> None:
    """10 rounds, 4 stages: ends 2, 5, 7, 10."""
    assert stage_table(10, 4, "sequential") == (1, 1, 2, 2, 2, 3, 3, 4, 4, 4)


def test_method_walks_the_sequential_schedule_and_marks_stage_ends() -> None:
    method = NeuLite(NeuLiteConfig(rounds=10, stage_order="sequential"))
    state = fresh_state(method)
    seen, ends = [], []
    for rnd in range(1, 11):
        seen.append(method.position(state)[2])
        state = method.aggregate(rnd, state, [])
        ends.append(method.round_metrics(state)["step_end"])
    assert seen == ["neulite:1", "neulite:1", "neulite:2", "neulite:2", "neulite:2",
                    "neulite:3", "neulite:3", "neulite:4", "neulite:4", "neulite:4"]
    assert ends == [None, "fixed", None, None, "fixed", None, "fixed", None, None, "fixed"]
    assert method.is_finished(state)


def test_evaluation_is_on_the_deepest_stage_trained_so_far() -> None:
    """Cyclic: after stage 4's round, a round of stage 1 is evaluated on the full model."""
    method = NeuLite(NeuLiteConfig(rounds=8))
    state = fresh_state(method)
    assert method.eval_submodel(state, "neulite:1").student == ("block1", "om1.basic2",
                                                                "om1.basic3", "om1.basic4",
                                                                "om1.head")
    for rnd in range(1, 6):
        state = method.aggregate(rnd, state, [])
    assert method.eval_submodel(state, "neulite:1").student == ("block4", "head")


def test_only_devices_that_fit_the_stage_are_selected() -> None:
    fleet = Fleet("mixed", (Device(device_id=0, budget_bytes=100),
                            Device(device_id=1, budget_bytes=200)))
    method = NeuLite(NeuLiteConfig(rounds=8, per_round=2))
    tasks = method.configure_round(1, fresh_state(method), fleet, TABLE | {"neulite:1": 150},
                                   np.random.default_rng(0))
    assert [task.client_id for task in tasks] == [1]


# ----------------------------------------------------------------- the memory plan's cases


def test_memory_plan_holds_one_case_per_stage() -> None:
    method = NeuLite(NeuLiteConfig(rounds=8))
    assert list(method.memory_plan(fresh_state(method))) == [f"neulite:{t}" for t in range(1, 5)]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("t", range(1, T + 1))
def test_a_stage_peak_predicted_equals_dispatched(t: int) -> None:
    predicted = reports("predict")[f"neulite:{t}"].tensor_peak_bytes
    assert predicted == reports("dispatch")[f"neulite:{t}"].tensor_peak_bytes


@functools.cache
def plain_and_profl() -> tuple[dict[str, MemoryReport], dict[str, MemoryReport]]:
    """The predicted tables of NeuLite without its two additions and of ProFL, on SPEC."""
    plain = NeuLite(NeuLiteConfig(rounds=8, batch_size=BATCH, harmonize=False, lambda_x=0.0,
                                  lambda_y=0.0))
    return (method_table(plain, SPEC, batch_size=BATCH, probe="predict"),
            method_table(ProFL(ProFLConfig(rounds=8, batch_size=BATCH)), SPEC,
                         batch_size=BATCH, probe="predict"))


@pytest.mark.parametrize("t", range(1, T + 1))
def test_without_mentor_and_harmonizer_a_stage_is_profls_grow_step(t: int) -> None:
    """No harmonized layer, both HSIC weights 0: stage t's step is ProFL's grow:t (B_t and
    OM_t on the frozen B_1 .. B_{t-1}), to the byte (tensor and heap)."""
    plain, profl = plain_and_profl()
    assert plain[f"neulite:{t}"].tensor_peak_bytes == profl[f"grow:{t}"].tensor_peak_bytes
    assert plain[f"neulite:{t}"].heap_peak_bytes == profl[f"grow:{t}"].heap_peak_bytes


def test_a_stage_case_text_is_measured_as_the_methods_step() -> None:
    case = case_from_text(SPEC, "neulite:3", batch_size=BATCH)
    assert measure(case, probe="predict").tensor_peak_bytes == (
        reports("predict")["neulite:3"].tensor_peak_bytes)


# ----------------------------------------------------------------- a tiny run


@pytest.mark.usefixtures("one_thread")
def test_neulite_learns_a_tiny_problem() -> None:
    """4 classes (chance 0.25): after 8 rounds (two cycles) the full model reaches 0.45, and
    every participant fits its stage's bytes."""
    train = synthetic_dataset(num_samples=320, input_shape=(1, 8, 8), num_classes=4,
                              generator=torch.Generator().manual_seed(0), noise=1.0)
    test = synthetic_dataset(num_samples=200, input_shape=(1, 8, 8), num_classes=4,
                             generator=torch.Generator().manual_seed(0), noise=1.0)
    parts = partition("iid", train.y.numpy(), 8, np.random.default_rng(0))
    data = FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)
    table = {"neulite:1": 60, "neulite:2": 70, "neulite:3": 80, "neulite:4": 100}
    fleet = Fleet("rel", tuple(Device(device_id=i, budget_bytes=int(f))
                               for i, f in enumerate(np.linspace(50, 140, 8))))
    method = NeuLite(NeuLiteConfig(rounds=8, per_round=4, local_epochs=2, batch_size=16,
                                   lr=0.05))
    sink = ListSink()
    run_federated(method, fleet, data, RunConfig(rounds=8, seed=0), model=build_model(
        TINY, generator=torch.Generator().manual_seed(1)), memory_table=table, sink=sink)
    for record in sink.records:
        for cid, need in zip(record.participants, record.required_bytes, strict=True):
            assert need <= fleet.devices[cid].budget_bytes
    assert sink.records[-1].accuracy >= 0.45


def test_model_weights_leave_out_the_output_modules() -> None:
    method = NeuLite(NeuLiteConfig(rounds=8))
    assert set(method.model_weights(fresh_state(method))) == set(build_model(SPEC).state_dict())


# ----------------------------------------------------------------- config


def test_config_rejects_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="nope"):
        NeuLiteConfig.from_dict({"rounds": 8, "nope": 1})


def test_config_rejects_an_unknown_stage_order() -> None:
    with pytest.raises(ConfigError, match="stage_order='em'"):
        NeuLiteConfig(rounds=8, stage_order="em")  # type: ignore[arg-type]
