"""The BlockedModel contract for every model of the zoo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from profl_core.errors import ConfigError
from profl_core.models import MODEL_NAMES, build_model, native_spec
from profl_core.models.summary import summarize_blocks


def _model(name: str, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    spec = native_spec(name, width=width, num_classes=num_classes)
    return build_model(spec, generator=torch.Generator().manual_seed(0)).eval()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("width", [1.0, 0.25])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_blocks_composes_to_forward(name: str, width: float) -> None:
    model = _model(name, width)
    x = torch.randn(2, *model.spec.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        h = x
        for i in range(model.num_blocks):
            h = model.forward_blocks(h, i, i + 1)
        got = model.head(h)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_block_names_are_state_dict_prefixes(name: str) -> None:
    model = _model(name, 0.25)
    prefixes = {key.split(".")[0] for key in model.state_dict()}
    assert prefixes == {*model.block_names(), "head"}


def _conv_bn(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + 2 * cout


def _resnet_oracle(depths: tuple[int, ...], classes: int) -> int:
    """Count a CIFAR ResNet by hand: conv weights (no bias) + BN affine + the linear head."""
    total = _conv_bn(3, 64, 3)
    cin = 64
    for cout, depth in zip((64, 128, 256, 512), depths, strict=True):
        for b in range(depth):
            total += _conv_bn(cin, cout, 3) + _conv_bn(cout, cout, 3)
            if b == 0 and cin != cout:
                total += _conv_bn(cin, cout, 1)
            cin = cout
    return total + 512 * classes + classes


def test_resnet18_has_the_published_parameter_count() -> None:
    assert _count(_model("resnet18")) == 11_173_962


@pytest.mark.parametrize(
    ("name", "depths"), [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))]
)
@pytest.mark.parametrize("classes", [10, 100])
def test_resnet_counts_match_hand_count(name: str, depths: tuple[int, ...], classes: int) -> None:
    assert _count(_model(name, num_classes=classes)) == _resnet_oracle(depths, classes)


@pytest.mark.parametrize(
    ("name", "convs"),
    [
        ("vgg11", [64, 128, 256, 256, 512, 512, 512, 512]),
        ("vgg16", [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]),
    ],
)
def test_vgg_counts_match_hand_count(name: str, convs: list[int]) -> None:
    expected, cin = 0, 3
    for cout in convs:
        expected += _conv_bn(cin, cout, 3)
        cin = cout
    assert _count(_model(name)) == expected + 512 * 10 + 10


def test_cnn_count_matches_hand_count() -> None:
    expected, cin = 0, 1
    for cout in (32, 64, 128, 256):
        expected += _conv_bn(cin, cout, 3) + _conv_bn(cout, cout, 3)
        cin = cout
    assert _count(_model("cnn")) == expected + 256 * 10 + 10


def test_vit_count_matches_hand_count() -> None:
    dim, tokens, classes = 192, 64, 10
    layer = 2 * (2 * dim) + (3 * dim * dim + 3 * dim) + (dim * dim + dim)  # 2 LN + qkv + out
    layer += (dim * 2 * dim + 2 * dim) + (2 * dim * dim + dim)  # MLP with ratio 2
    embed = 3 * dim * 4 * 4 + dim + tokens * dim
    head = 2 * dim + dim * classes + classes
    assert _count(_model("vit")) == embed + 8 * layer + head


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_summary_params_add_up_to_the_model(name: str) -> None:
    model = _model(name, 0.5)
    assert sum(row.params for row in summarize_blocks(model)) == _count(model)


@pytest.mark.parametrize("width", [1.0, 0.25])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_module_gives_logits_for_every_step(name: str, width: float) -> None:
    model = _model(name, width, num_classes=7)
    x = torch.randn(3, *model.spec.input_shape)
    with torch.no_grad():
        for step in range(1, model.num_blocks + 1):
            module = model.output_module(step)
            logits = module(model.forward_blocks(x, 0, step))
            assert logits.shape == (3, 7), (name, step)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_module_of_previous_step_adds_one_basic_layer(name: str) -> None:
    model = _model(name, 0.25)
    for step in range(2, model.num_blocks + 1):
        later = set(model.output_module(step).state_dict())
        earlier = set(model.output_module(step - 1).state_dict())
        added = {key.split(".")[0] for key in earlier - later}
        assert added == {f"basic{step}"}


def test_width_scales_channels_with_ceil() -> None:
    model = _model("resnet18", 1 / 16)
    assert model.stage_channels == (4, 8, 16, 32)


def test_bad_spec_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet50'"):
        native_spec("resnet50")
    with pytest.raises(ConfigError, match="width"):
        native_spec("cnn", width=0.0)
    with pytest.raises(ConfigError, match="input_size"):
        build_model(native_spec("vgg16", input_size=28))


def test_same_generator_seed_gives_same_weights() -> None:
    a, b = _model("cnn"), _model("cnn")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb)
