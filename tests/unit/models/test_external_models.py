"""User models (``pkg.module:factory``) and torchvision models (``torchvision:NAME``).

The user models live in a module written into a temporary folder put on ``sys.path``, as a
user's own package would be. Oracles: the user's module itself (same seed, same weights: the
blocks must give its forward bit for bit), torchvision's model built directly, and shapes worked
out by hand from the convolution arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from profl_core.errors import ConfigError
from profl_core.memory.case import TrainingCase
from profl_core.models import (
    TORCHVISION_MODELS,
    ExternalModel,
    ModelSpec,
    build_model,
    check_model_name,
    native_spec,
    parse_blocks,
)
from profl_core.models.wrapper import stand_in
from tests.conftest import importable_module

MODULE = "profl_test_user_models"
SOURCE = '''
import torch
from torch import nn


def conv(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


def head(cin, num_classes):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, num_classes))


def seq(num_classes):
    """A plain nn.Sequential: its top-level children are the blocks, the last the head."""
    return nn.Sequential(conv(3, 8, 1), conv(8, 16, 2), conv(16, 32, 2), head(32, num_classes))


class Listed(nn.Module):
    def __init__(self, num_classes, width=1.0):
        super().__init__()
        c = max(1, round(16 * width))
        self.features = nn.Sequential(conv(3, c, 1), conv(c, c, 1), conv(c, 2 * c, 2),
                                      conv(2 * c, 2 * c, 1), conv(2 * c, 4 * c, 2))
        self.classifier = head(4 * c, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


LISTED_GROUPS = ["features.0-1", "features.2-3", "features.4", "classifier"]


def listed(num_classes, width=1.0):
    """A module with an explicit block list (a tuple), and a width argument."""
    return Listed(num_classes, width), LISTED_GROUPS


def plain_listed(num_classes):
    return Listed(num_classes)


class Glue(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.a = conv(3, 8, 2)
        self.b = conv(8, 8, 2)
        self.fc = nn.Sequential(nn.Flatten(1), nn.Linear(8 * 8 * 8, num_classes))

    def forward(self, x):
        return self.fc(torch.tanh(self.b(self.a(x))))


def glue(num_classes):
    """Its forward applies a function between modules: the children give other values."""
    return Glue(num_classes)


class FlattenGlue(Glue):
    def __init__(self, num_classes):
        super().__init__(num_classes)
        self.fc = nn.Linear(8 * 8 * 8, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.b(self.a(x)), 1))


def flatten_glue(num_classes):
    """torch.flatten between modules: the head cannot take the block's output."""
    return FlattenGlue(num_classes)


def five_classes(num_classes):
    return nn.Sequential(conv(3, 8, 1), conv(8, 8, 2), head(8, 5))


def flat_middle(num_classes):
    return nn.Sequential(conv(3, 4, 2), nn.Sequential(nn.Flatten(1), nn.Linear(1024, 32)),
                         nn.Linear(32, 32), nn.Linear(32, num_classes))


def no_width(num_classes):
    return seq(num_classes)


def not_a_module(num_classes):
    return "a model"


NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module", autouse=True)
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``profl_test_user_models`` importable from a temporary folder."""
    with importable_module(tmp_path_factory.mktemp("user"), MODULE, SOURCE):
        yield


def _name(factory: str) -> str:
    return f"{MODULE}:{factory}"


def _seed() -> int:
    """The seed build_model draws from ``Generator().manual_seed(0)``."""
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(0)))


def _built(factory: str, **fields: object) -> ExternalModel:
    model = build_model(native_spec(_name(factory), **fields),
                        generator=torch.Generator().manual_seed(0))
    assert isinstance(model, ExternalModel)
    return model.eval()


def _user(factory: str) -> nn.Module:
    """The user's own module, built from the seed build_model uses."""
    module = __import__(MODULE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed())
        made = getattr(module, factory)(num_classes=10)
    return (made[0] if isinstance(made, tuple) else made).eval()


def _x(shape: tuple[int, ...] = (3, 32, 32)) -> torch.Tensor:
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))


def _composed(model: ExternalModel, x: torch.Tensor) -> torch.Tensor:
    h = x
    for i in range(model.num_blocks):
        h = model.forward_blocks(h, i, i + 1)
    return model.head(h)


# --- user models: partitions and composition ------------------------------------------------


def test_a_sequential_is_cut_into_its_top_level_children() -> None:
    assert _built("seq").groups == ("0", "1", "2", "3")


def test_the_last_group_is_the_head() -> None:
    model = _built("seq")
    assert model.num_blocks == 3
    assert isinstance(model.head[2], nn.Linear)


def test_sequential_blocks_compose_to_the_users_forward() -> None:
    model, user, x = _built("seq"), _user("seq"), _x()
    with torch.no_grad():
        torch.testing.assert_close(_composed(model, x), user(x), rtol=0, atol=0)


def test_an_explicit_block_list_from_the_factory_is_used() -> None:
    assert _built("listed").groups == ("features.0-1", "features.2-3", "features.4",
                                       "classifier")


def test_explicit_blocks_compose_to_the_users_forward() -> None:
    model, user, x = _built("listed"), _user("listed"), _x()
    with torch.no_grad():
        torch.testing.assert_close(_composed(model, x), user(x), rtol=0, atol=0)


def test_a_range_keeps_the_childrens_names() -> None:
    model = _built("listed")
    assert [name for name, _ in model.block1.named_children()] == ["0", "1"]


def test_spec_blocks_override_the_default_partition() -> None:
    model = _built("plain_listed", blocks=("features.0-2", "features.3-4", "classifier"))
    assert model.num_blocks == 2


def test_the_blocks_share_the_users_parameters() -> None:
    """No module is copied or dropped: the wrapper holds exactly the user's parameters."""
    model, user = _built("listed"), _user("listed")
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in user.parameters())


def test_state_dict_prefixes_are_the_block_names() -> None:
    model = _built("listed")
    assert {k.split(".")[0] for k in model.state_dict()} == {"block1", "block2", "block3", "head"}


def test_the_factory_gets_the_width() -> None:
    """Listed builds round(16 * width) channels in its first stage."""
    model = _built("listed", width=0.5)
    assert model.block1[0][0].out_channels == 8


def test_the_same_generator_gives_the_same_weights() -> None:
    first, second = _built("listed"), _built("listed")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 second.state_dict().values(), strict=True))


# --- output modules --------------------------------------------------------------------------


def test_output_module_names_one_stand_in_per_missing_block_then_head() -> None:
    assert list(dict(_built("seq").output_module(1).named_children())) == [
        "basic2", "basic3", "head"]


def test_output_module_maps_a_block_output_to_logits() -> None:
    model = _built("listed")
    with torch.no_grad():
        h = model.forward_blocks(_x(), 0, 1)
        assert model.output_module(1).eval()(h).shape == (2, 10)


def test_last_steps_output_module_is_a_fresh_head() -> None:
    model = _built("seq")
    om = model.output_module(model.num_blocks)
    assert not torch.equal(om.head[2].weight, model.head[2].weight)


def test_output_module_of_step_t_minus_1_extends_step_t() -> None:
    model = _built("listed")
    assert list(dict(model.output_module(1).named_children())) == [
        "basic2", *dict(model.output_module(2).named_children())]


@pytest.mark.parametrize(
    ("shape_in", "shape_out", "stride"),
    [((16, 16, 16), (24, 8, 8), (2, 2)), ((8, 5, 5), (8, 2, 2), (3, 3)),
     ((8, 2, 2), (32, 1, 1), (2, 2)), ((8, 8, 4), (8, 8, 2), (1, 2)),
     ((4, 16, 16), (4, 4, 4), (4, 4))],
)
def test_stand_in_picks_the_stride_that_matches(
    shape_in: tuple[int, ...], shape_out: tuple[int, ...], stride: tuple[int, int]
) -> None:
    """(H - 1) // s + 1 == H' for a 3x3 convolution with padding 1."""
    layer = stand_in(shape_in, shape_out, model="m", block=2)
    assert layer[0].stride == stride


def test_stand_in_pools_only_when_no_stride_matches() -> None:
    layer = stand_in((8, 4, 4), (8, 3, 3), model="m", block=2)
    assert isinstance(layer[-1], nn.AdaptiveAvgPool2d)


def test_a_pooled_stand_in_gives_the_target_shape() -> None:
    layer = stand_in((8, 4, 4), (8, 3, 3), model="m", block=2).eval()
    assert layer(torch.zeros(1, 8, 4, 4)).shape == (1, 8, 3, 3)


def test_an_exact_stand_in_has_no_pooling() -> None:
    assert len(stand_in((16, 16, 16), (24, 8, 8), model="m", block=2)) == 3


@pytest.mark.parametrize(("shape_in", "shape_out"), [((64,), (32,)), ((16, 64), (16, 32))])
def test_stand_in_for_a_last_dimension_change_is_a_linear(
    shape_in: tuple[int, ...], shape_out: tuple[int, ...]
) -> None:
    layer = stand_in(shape_in, shape_out, model="m", block=2)
    assert (layer.in_features, layer.out_features) == (shape_in[-1], shape_out[-1])


# --- errors: one line naming the model string and what is wrong --------------------------------


def _error(name: str, **fields: object) -> str:
    with pytest.raises(ConfigError) as info:
        build_model(native_spec(name, **fields))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_module_that_cannot_be_imported() -> None:
    with pytest.raises(ConfigError, match=r"'no_such_pkg\.mod:f': cannot import no_such_pkg"):
        check_model_name("no_such_pkg.mod:f")


def test_an_attribute_that_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"has no attribute 'nothing_here'"):
        check_model_name(_name("nothing_here"))


def test_an_attribute_that_is_not_callable() -> None:
    with pytest.raises(ConfigError, match=r"NOT_CALLABLE is a int, not callable"):
        check_model_name(_name("NOT_CALLABLE"))


def test_a_factory_that_returns_no_module() -> None:
    assert "returned a str, not an nn.Module" in _error(_name("not_a_module"))


def test_groups_that_overlap() -> None:
    message = _error(_name("plain_listed"), blocks=("features", "features.1-2", "classifier"))
    assert "block groups 'features' and 'features.1-2' overlap" in message


def test_a_group_that_names_no_module() -> None:
    message = _error(_name("plain_listed"), blocks=("features.0-1", "features.9", "classifier"))
    assert "'features.9': features has no submodule '9'" in message


def test_blocks_that_do_not_compose_to_the_forward() -> None:
    message = _error(_name("glue"))
    assert "the blocks do not compose to its forward (max abs diff" in message


def test_blocks_whose_shapes_do_not_chain() -> None:
    message = _error(_name("flatten_glue"))
    assert "head failed on the output of the group before it (RuntimeError" in message


def test_output_that_is_not_batch_by_classes() -> None:
    assert "output shape (2, 5)" in _error(_name("five_classes"))


def test_a_factory_without_a_width_argument() -> None:
    assert "takes no width argument" in _error(_name("no_width"), width=0.5)


def test_a_block_output_no_stand_in_can_reach() -> None:
    message = _error(_name("flat_middle"))
    assert "no stand-in for block2, which maps per-sample shape (4, 16, 16) to (32,)" in message


def test_fewer_than_two_blocks() -> None:
    message = _error(_name("plain_listed"), blocks=("features", "classifier"))
    assert "give at least two blocks and a head" in message


def test_a_malformed_model_string() -> None:
    with pytest.raises(ConfigError, match=r"not a model name"):
        check_model_name("pkg.mod:")


def test_a_malformed_group() -> None:
    with pytest.raises(ConfigError, match=r"--blocks: block group 'features\.1-' is not"):
        parse_blocks("features.0,features.1-,head")


def test_a_zoo_model_regrouped_into_missing_modules() -> None:
    assert "the model has no submodule 'a'" in _error("resnet18", blocks=("a", "b", "c"))


# --- the spec -----------------------------------------------------------------------------------


def test_parse_blocks_splits_on_commas() -> None:
    assert parse_blocks("features.0-3, features.4 ,classifier") == (
        "features.0-3", "features.4", "classifier")


def test_a_case_with_blocks_round_trips_through_params() -> None:
    spec = native_spec(_name("plain_listed"), blocks=("features.0-2", "features.3-4",
                                                      "classifier"))
    case = TrainingCase(model=spec, kind="grow", step=2, batch_size=4)
    assert TrainingCase.from_params(case.params()) == case


def test_a_spec_given_a_list_of_blocks_holds_a_tuple() -> None:
    spec = ModelSpec(name="x:y", blocks=["a", "b", "c"])  # type: ignore[arg-type]
    assert spec.blocks == ("a", "b", "c")


# --- torchvision ----------------------------------------------------------------------------

#: The resolution stages at 32x32 worked out from torchvision's stride-2 layers.
TORCHVISION_STAGES = {
    "mobilenet_v2": ("features.0-1", "features.2-3", "features.4-6", "features.7-13",
                     "features.14-18", "head"),
    "mobilenet_v3_small": ("features.0", "features.1", "features.2-3", "features.4-8",
                           "features.9-12", "head"),
    "mobilenet_v3_large": ("features.0-1", "features.2-3", "features.4-6", "features.7-12",
                           "features.13-16", "head"),
    "efficientnet_b0": ("features.0-1", "features.2", "features.3", "features.4-5",
                        "features.6-8", "head"),
    "shufflenet_v2_x1_0": ("conv1-maxpool", "stage2", "stage3", "stage4-conv5", "head"),
    "resnet18": ("conv1-layer1", "layer2", "layer3", "layer4", "head"),
}


def _torchvision(family: str, **fields: object) -> ExternalModel:
    return _built_any(f"torchvision:{family}", **fields)


def _built_any(name: str, **fields: object) -> ExternalModel:
    model = build_model(native_spec(name, **fields), generator=torch.Generator().manual_seed(0))
    assert isinstance(model, ExternalModel)
    return model.eval()


def _tv_net(family: str, **kwargs: object) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed())
        return getattr(tvm, family)(weights=None, num_classes=10, **kwargs).eval()


def test_the_six_families_are_supported() -> None:
    assert tuple(f"torchvision:{f}" for f in TORCHVISION_STAGES) == TORCHVISION_MODELS


@pytest.mark.parametrize("family", list(TORCHVISION_STAGES))
def test_torchvision_default_partition_is_the_resolution_stages(family: str) -> None:
    assert _torchvision(family).groups == TORCHVISION_STAGES[family]


@pytest.mark.parametrize("family", list(TORCHVISION_STAGES))
def test_torchvision_blocks_compose_to_torchvisions_forward(family: str) -> None:
    model, net, x = _torchvision(family), _tv_net(family), _x()
    with torch.no_grad():
        torch.testing.assert_close(_composed(model, x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["mobilenet_v3_small", "resnet18"])
def test_torchvision_models_keep_every_parameter(family: str) -> None:
    assert sum(p.numel() for p in _torchvision(family).parameters()) == sum(
        p.numel() for p in _tv_net(family).parameters())


def test_mobilenet_v2_takes_a_width() -> None:
    assert sum(p.numel() for p in _torchvision("mobilenet_v2", width=0.5).parameters()) == sum(
        p.numel() for p in _tv_net("mobilenet_v2", width_mult=0.5).parameters())


def test_families_without_a_width_refuse_one() -> None:
    assert "has no width multiplier" in _error("torchvision:resnet18", width=0.5)


def test_torchvision_takes_one_input_channel() -> None:
    model = _torchvision("mobilenet_v3_small", in_channels=1, input_size=28)
    with torch.no_grad():
        assert model(_x((1, 28, 28))).shape == (2, 10)


def test_torchvision_blocks_can_be_given() -> None:
    model = _torchvision("resnet18", blocks=("conv1-layer2", "layer3-layer4", "head"))
    assert model.num_blocks == 2


def test_an_unknown_torchvision_model() -> None:
    with pytest.raises(ConfigError, match=r"'torchvision:alexnet': not a supported torchvision"):
        check_model_name("torchvision:alexnet")


def test_torchvision_output_modules_reach_the_head() -> None:
    model = _torchvision("mobilenet_v3_small")
    with torch.no_grad():
        h = model.forward_blocks(_x(), 0, 2)
        assert model.output_module(2).eval()(h).shape == (2, 10)


def test_an_unknown_plain_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet99'.*torchvision:NAME"):
        check_model_name("resnet99")


def test_a_forward_that_fails_on_the_input_names_where_the_input_comes_from() -> None:
    message = _error(_name("seq"), in_channels=1)
    assert "its forward failed on a 2x1x32x32 input" in message
    assert "the dataset's images in profl train" in message
