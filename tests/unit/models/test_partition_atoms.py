"""Partitions of one model share their composition check and their block output shapes
(``atoms`` in profl_core/models/wrapper.py, ``verify`` in profl_core/models/composition.py).

Oracles: a spy on the CPU check (how often it runs), the uncached meta-device forward of
:meth:`BlockedModel.block_output_shapes` (the shapes) and a spy on the meta copies the shape
cache makes (how many blocks it runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

import profl_core.models.base as base
import profl_core.models.composition as composition
import profl_core.models.wrapper as wrapper
from profl_core.errors import ConfigError
from profl_core.memory.plan import layer_units, partition_spec
from profl_core.models import BlockedModel, ExternalModel, build_model, native_spec
from tests.conftest import importable_module

MODULE = "profl_test_partition_atoms"
SOURCE = '''
from torch import nn


def flat(num_classes):
    """Two convolutions, a flatten and three linear layers: every cut after the flatten has
    stand-ins, a cut between the convolutions and the flatten has none."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.Flatten(1), nn.Linear(512, 32), nn.Linear(32, 32),
                         nn.Linear(32, num_classes))
'''


@pytest.fixture(scope="module", autouse=True)
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with importable_module(tmp_path_factory.mktemp("atoms"), MODULE, SOURCE):
        yield


def _spec(*groups: str):
    return native_spec(f"{MODULE}:flat", input_size=16, blocks=groups)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The specs (their groups) the CPU check runs for, in order."""
    ran: list[str] = []
    check = composition._check

    def spy(spec, builder):
        ran.append(",".join(spec.blocks))
        check(spec, builder)

    monkeypatch.setattr(composition, "_check", spy)
    return ran


def test_atoms_expand_every_plain_sequential_into_its_children() -> None:
    model = build_model(native_spec("resnet18", blocks=("block1", "block2-block3", "block4",
                                                        "head")))
    assert isinstance(model, ExternalModel)
    assert model.atoms[0] == ("block1.0", "block1.1", "block1.2", "block1.3", "block1.4")
    assert model.atoms[1][0] == "block2.0"
    assert model.atoms[1][-1] == "block3.1"
    assert model.atoms[-1] == ("head",)


def test_a_partition_with_the_same_atoms_is_not_run_on_the_cpu_again(checks) -> None:
    build_model(_spec("0-2", "3", "4", "5"))
    build_model(_spec("0-3", "4", "5"))
    assert checks == ["0-2,3,4,5"]


def test_the_same_atoms_with_a_cut_that_has_no_stand_in_are_still_refused(checks) -> None:
    build_model(_spec("0-2", "3-4", "5"))
    with pytest.raises(ConfigError, match=r"no stand-in for block2, which maps per-sample "
                                          r"shape \(8, 16, 16\) to \(32,\)"):
        build_model(_spec("0", "1-3", "4", "5"))
    assert "0,1-3,4,5" not in checks


def test_a_partition_that_leaves_a_module_out_is_checked_on_the_cpu_and_refused(
        checks) -> None:
    build_model(_spec("0-2", "3", "4", "5"))
    with pytest.raises(ConfigError, match="do not compose to its forward"):
        build_model(_spec("0-2", "3", "5"))
    assert checks[-1] == "0-2,3,5"


@pytest.fixture
def meta_copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per block the shape cache runs on the meta device."""
    made: list[int] = []
    copy = base.meta_copy

    def spy(module):
        made.append(1)
        return copy(module)

    monkeypatch.setattr(base, "meta_copy", spy)
    return made


RESNET18 = native_spec("resnet18", width=0.25, in_channels=1, input_size=28)
UNITS = layer_units(build_model(RESNET18))


@pytest.mark.parametrize("bounds", [[1, 3], [2, 5, 6], [4], [1, 2, 3, 4, 5, 6, 7, 8]])
def test_cached_block_shapes_are_the_meta_forward(bounds: list[int]) -> None:
    model = build_model(partition_spec(RESNET18, UNITS, bounds))
    assert isinstance(model, ExternalModel)
    assert model.block_output_shapes() == BlockedModel.block_output_shapes(model)


def test_shapes_at_known_boundaries_run_no_block(meta_copies) -> None:
    spec = partition_spec(replace(RESNET18, width=0.125), UNITS, [1, 2, 3, 4, 5, 6, 7, 8])
    build_model(spec).block_output_shapes()
    first = len(meta_copies)
    build_model(partition_spec(replace(RESNET18, width=0.125), UNITS, [2, 6])).block_output_shapes()
    assert first == 9
    assert len(meta_copies) == first


def test_a_full_shape_cache_is_emptied_and_the_shapes_are_still_right(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wrapper, "SHAPE_CACHE_SIZE", 2)
    for bounds in ([1, 3], [1, 3, 6], [2, 5, 6, 8]):
        model = build_model(partition_spec(replace(RESNET18, width=0.375), UNITS, bounds))
        assert model.block_output_shapes() == BlockedModel.block_output_shapes(model)
