"""Width slicing (HeteroFL, FedRolex, AllSmall): extraction, count-mean aggregation, windows."""

import math

import numpy as np
import pytest
import torch

from profl_core.errors import ConfigError
from profl_core.fl.types import ClientTask, ClientUpdate
from profl_core.methods.fedrolex import FedRolex
from profl_core.methods.heterofl import HeteroFL, HeteroFLConfig
from profl_core.methods.width import (
    LEVELS,
    build_width_model,
    extract,
    restrict,
    rolling_indices,
    scatter_mean,
    shapes,
    slice_plan,
    static_indices,
)
from profl_core.models import build_model, native_spec
from profl_core.models.cnn import CNN_WIDTHS


def tiny_global() -> dict[str, torch.Tensor]:
    """A hand-made 'model': conv 4x2 (1x1 kernel), a 4-channel norm, a 3-class classifier."""
    return {
        "conv.weight": torch.arange(8, dtype=torch.float32).reshape(4, 2, 1, 1),
        "bn.weight": torch.tensor([10.0, 11.0, 12.0, 13.0]),
        "fc.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4) + 100,
        "fc.bias": torch.tensor([7.0, 8.0, 9.0]),
    }


def client_state(channels: int, value: float) -> dict[str, torch.Tensor]:
    """A client of ``channels`` hidden channels whose every entry is ``value``."""
    return {
        "conv.weight": torch.full((channels, 2, 1, 1), value),
        "bn.weight": torch.full((channels,), value),
        "fc.weight": torch.full((3, channels), value),
        "fc.bias": torch.full((3,), value),
    }


def test_static_slices_and_count_mean_match_hand_oracle() -> None:
    """Clients of 2 and 1 channels: channel 0 is averaged over both, channel 1 comes from the
    wider one, channels 2..3 keep their value; the classifier's classes are never narrowed."""
    # Prepare
    glob = tiny_global()
    a, b = client_state(2, 1.0), client_state(1, 3.0)
    plan_a = slice_plan(shapes(glob), shapes(a), static_indices)
    plan_b = slice_plan(shapes(glob), shapes(b), static_indices)
    # Execute
    extracted = extract(glob, plan_a)
    merged = scatter_mean(glob, [(a, plan_a), (b, plan_b)])
    # Assert: extraction is the first channels
    assert extracted["conv.weight"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert extracted["fc.weight"].tolist() == [[100.0, 101.0], [104.0, 105.0], [108.0, 109.0]]
    # Assert: aggregation by hand
    assert merged["conv.weight"].flatten().tolist() == [2.0, 2.0, 1.0, 1.0, 4.0, 5.0, 6.0, 7.0]
    assert merged["bn.weight"].tolist() == [2.0, 1.0, 12.0, 13.0]
    assert merged["fc.weight"].tolist() == [
        [2.0, 1.0, 102.0, 103.0], [2.0, 1.0, 106.0, 107.0], [2.0, 1.0, 110.0, 111.0]
    ]
    assert merged["fc.bias"].tolist() == [2.0, 2.0, 2.0]


def test_masked_classifier_rows_come_only_from_clients_with_that_label() -> None:
    """Client a holds labels {0, 2}, b all labels: row 1 of the classifier is b's alone."""
    glob = tiny_global()
    a, b = client_state(2, 1.0), client_state(2, 3.0)
    plan = slice_plan(shapes(glob), shapes(a), static_indices)
    a_rows, a_plan = restrict(a, plan, ["fc.weight", "fc.bias"], 0, torch.tensor([0, 2]))
    merged = scatter_mean(glob, [(a_rows, a_plan), (b, plan)])
    assert merged["fc.bias"].tolist() == [2.0, 3.0, 2.0]
    assert merged["fc.weight"][:, :2].tolist() == [[2.0, 2.0], [3.0, 3.0], [2.0, 2.0]]
    assert merged["bn.weight"].tolist() == [2.0, 2.0, 12.0, 13.0]


def test_rolling_window_moves_by_one_and_wraps_around() -> None:
    """K = 8 channels, a client of 3: windows start at shift mod 8."""
    assert rolling_indices(0)(8, 3).tolist() == [0, 1, 2]
    assert rolling_indices(1)(8, 3).tolist() == [1, 2, 3]
    assert rolling_indices(6)(8, 3).tolist() == [6, 7, 0]
    assert rolling_indices(7)(8, 3).tolist() == [7, 0, 1]
    assert rolling_indices(8)(8, 3).tolist() == [0, 1, 2]
    # HeteroFL never moves
    assert static_indices(8, 3).tolist() == [0, 1, 2]


def test_fedrolex_client_slice_follows_the_round() -> None:
    """In round t (t - 1 rounds done) a width-1/2 client of cnn holds channels (t-1).. of block1."""
    spec = native_spec("cnn", width=0.25, num_classes=4)  # block1 has 8 channels
    method = FedRolex(HeteroFLConfig(rounds=20, per_round=1))
    state = method.init_state(build_model(spec, generator=torch.Generator().manual_seed(0)),
                              np.random.default_rng(0))
    task = ClientTask(client_id=0, submodel="w0.5", trainable=frozenset(), required_bytes=0)
    w = state.weights["block1.0.weight"]  # (8, 1, 3, 3)
    for done, expected in ((0, [0, 1, 2, 3]), (1, [1, 2, 3, 4]), (6, [6, 7, 0, 1])):
        state.meta["rounds_used"] = done
        sub = method.submodel(state, task)
        local = sub.modules["block1"].state_dict()["0.weight"]
        assert torch.equal(local, w[expected]), done


def test_heterofl_aggregate_keeps_untouched_entries() -> None:
    """One width-1/4 client: entries outside its prefix are unchanged, inside are its values."""
    spec = native_spec("cnn", width=0.25, num_classes=4)
    method = HeteroFL(HeteroFLConfig(rounds=2, per_round=1))
    state = method.init_state(build_model(spec, generator=torch.Generator().manual_seed(0)),
                              np.random.default_rng(0))
    task = ClientTask(client_id=0, submodel="w0.25", trainable=frozenset(), required_bytes=0)
    sub = method.submodel(state, task)
    update = {k: torch.full_like(v, 5.0) for k, v in sub.state().items()}
    new = method.aggregate(1, state, [ClientUpdate(client_id=0, state=update, num_examples=3)])
    before, after = state.weights["block2.0.weight"], new.weights["block2.0.weight"]
    # cnn@0.25: block2 conv is 16x8; at 1/4 of that the client holds 4x2
    assert torch.all(after[:4, :2] == 5.0)
    assert torch.equal(after[4:], before[4:])
    assert torch.equal(after[:, 2:], before[:, 2:])
    assert not any("running_" in k for k in new.weights)  # sBN: no running statistics


def cnn_params(width: float, classes: int) -> int:
    """Independent count: two 3x3 convs (no bias) and two BNs per stage, then the classifier."""
    widths = [max(1, math.ceil(c * width)) for c in CNN_WIDTHS]
    total, prev = 0, 1
    for c in widths:
        total += prev * c * 9 + c * c * 9 + 4 * c
        prev = c
    return total + widths[-1] * classes + classes


@pytest.mark.parametrize("level", LEVELS)
def test_extracted_width_submodel_parameter_count(level: float) -> None:
    """The sub-state cut from the global cnn has the hand-counted number of parameters."""
    spec = native_spec("cnn", num_classes=10)
    glob = build_model(spec).state_dict()
    local = build_width_model(spec, level)
    params = {n for n, _ in local.named_parameters()}
    plan = slice_plan(shapes(glob), shapes(local.state_dict()), static_indices)
    sub = extract(glob, plan)
    assert sum(v.numel() for k, v in sub.items() if k in params) == cnn_params(level, 10)


def test_bad_slice_is_a_config_error() -> None:
    """A local tensor larger than the global one is rejected with one line."""
    with pytest.raises(ConfigError, match="not a slice"):
        slice_plan({"w": (2, 2)}, {"w": (3, 2)}, static_indices)
