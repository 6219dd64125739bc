"""Depth sub-models (DepthFL, InclusiveFL): parameter counts, the DepthFL loss, memory kinds."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from profl_core.fl.types import ClientTask
from profl_core.memory import case_from_text, measure
from profl_core.methods.depthfl import DepthFL, DepthFLConfig, kd_weight
from profl_core.methods.inclusivefl import InclusiveFL
from profl_core.models import build_model, native_spec
from profl_core.models.cnn import CNN_WIDTHS
from profl_core.models.exits import mutual_distillation_loss

CLASSES = 10


def stage_params(k: int) -> int:
    """Stage k of cnn: two 3x3 convs (no bias) and two BNs."""
    prev = 1 if k == 1 else CNN_WIDTHS[k - 2]
    c = CNN_WIDTHS[k - 1]
    return prev * c * 9 + c * c * 9 + 4 * c


def exit_params(k: int) -> int:
    """Exit after stage k: one basic layer (3x3 stride-2 conv without bias + BN weight and
    bias) per missing stage, then the classifier."""
    convs = sum(CNN_WIDTHS[i - 1] * CNN_WIDTHS[i] * 9 + 2 * CNN_WIDTHS[i]
                for i in range(k, len(CNN_WIDTHS)))
    return convs + CNN_WIDTHS[-1] * CLASSES + CLASSES


def sub_param_count(method: DepthFL, k: int, weights: dict[str, torch.Tensor]) -> int:
    """Parameters (not BN statistics) of the modules a depth-k client holds."""
    names = method.module_names(k, len(CNN_WIDTHS))
    return sum(v.numel() for key, v in weights.items()
               if key.split(".")[0] in names and "running_" not in key
               and "num_batches" not in key)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_depth_submodel_parameter_counts(k: int) -> None:
    """DepthFL holds blocks 1..k and exits 1..k; InclusiveFL blocks 1..k and exit k only."""
    model = build_model(native_spec("cnn", num_classes=CLASSES))
    blocks = sum(stage_params(i) for i in range(1, k + 1))
    for cls, exits in ((DepthFL, range(1, k + 1)), (InclusiveFL, [k])):
        method = cls(DepthFLConfig(rounds=1))
        state = method.init_state(model, np.random.default_rng(0))
        expected = blocks + sum(exit_params(i) for i in exits)
        assert sub_param_count(method, k, state.weights) == expected, cls.name


def test_mutual_distillation_loss_matches_the_formula() -> None:
    """Three exits on a fixed batch: sum of CEs + w/(k-1) * sum of pairwise KLs (batch mean)."""
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 4, generator=gen) for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 3, 1])
    w = 0.3
    expected = 0.0
    for i, o_i in enumerate(logits):
        expected += F.cross_entropy(o_i, labels).item()
        for j, o_j in enumerate(logits):
            if j != i:
                target = F.softmax(o_j, dim=1) + 1e-7
                kl = F.kl_div(F.log_softmax(o_i, dim=1), target, reduction="batchmean").item()
                expected += w / 2 * kl
    assert mutual_distillation_loss(logits, labels, kd_weight=w).item() == pytest.approx(
        expected, rel=1e-6
    )
    one = mutual_distillation_loss(logits[:1], labels, kd_weight=w).item()
    assert one == pytest.approx(F.cross_entropy(logits[0], labels).item(), rel=1e-6)


def test_kd_weight_ramp() -> None:
    """w_t = exp(-5 (1 - min(t, R)/R)^2): exp(-5) at 0, 1 from R on."""
    assert kd_weight(0, 300) == pytest.approx(math.exp(-5))
    assert kd_weight(150, 300) == pytest.approx(math.exp(-1.25))
    assert kd_weight(300, 300) == 1.0
    assert kd_weight(900, 300) == 1.0


def test_depthfl_client_loss_is_the_formula_on_its_exits() -> None:
    """The sub-model's criterion on its stacked exits equals the loss with the round's weight."""
    spec = native_spec("cnn", width=0.25, num_classes=4)
    method = DepthFL(DepthFLConfig(rounds=10, kd_ramp_rounds=4))
    state = method.init_state(build_model(spec, generator=torch.Generator().manual_seed(0)),
                              np.random.default_rng(0))
    state.meta["rounds_used"] = 1  # round 2
    task = ClientTask(client_id=0, submodel="depth:3", trainable=frozenset(), required_bytes=0)
    sub = method.submodel(state, task)
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    for module in sub.modules.values():
        module.eval()
    with torch.no_grad():
        stacked = sub.output(x)
        assert sub.criterion is not None
        got = sub.criterion(stacked, y).item()
        h, exits = x, []
        for i in (1, 2, 3):
            h = sub.modules[f"block{i}"](h)
            exits.append(sub.modules[f"exit{i}"](h))
    assert stacked.shape == (3, 6, 4)
    expected = mutual_distillation_loss(exits, y, kd_weight=kd_weight(2, 4)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_depth_memory_cases_grow_with_depth_and_exits_cost_memory() -> None:
    """depth:k peaks rise with k; depth:k >= trunc:k (more exits); trunc:T is the full model."""
    peaks = {t: measure(case_from_text("cnn", t, batch_size=8)).tensor_peak_bytes
             for t in ("full", "depth:1", "depth:2", "depth:4", "trunc:1", "trunc:2", "trunc:4")}
    assert peaks["depth:1"] < peaks["depth:2"] < peaks["depth:4"]
    assert peaks["depth:2"] > peaks["trunc:2"]
    assert peaks["depth:1"] == peaks["trunc:1"]
    assert peaks["trunc:4"] == peaks["full"]
