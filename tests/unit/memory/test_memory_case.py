"""TrainingCase, parse_case and the prepared step (no memory measured here)."""

from __future__ import annotations

import pytest
import torch

from profl_core.errors import ConfigError
from profl_core.memory.case import TrainingCase, all_cases
from profl_core.memory.case_text import case_from_text, parse_case
from profl_core.memory.step import build_step
from profl_core.models import native_spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [("full", ("full", None)), ("grow:2", ("grow", 2)), ("shrink:4", ("shrink", 4))],
)
def test_parse_case_accepts_the_three_kinds(text: str, expected: tuple[str, int | None]) -> None:
    assert parse_case(text, blocks=4) == expected


@pytest.mark.parametrize("text", ["grow:9", "shrink:1", "grow", "full:2", "bogus", "grow:x"])
def test_parse_case_rejects_bad_text_with_one_line(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_case(text, blocks=4)
    assert "\n" not in str(err.value)


def test_key_names_model_width_case_and_batch() -> None:
    full = TrainingCase(model=native_spec("resnet18", width=0.5), kind="full", batch_size=64)
    grow = TrainingCase(model=native_spec("resnet18"), kind="grow", step=2, batch_size=64)
    assert (full.key, grow.key, grow.label) == (
        "resnet18@w0.5/full/bs64", "resnet18/grow:2/bs64", "grow:2"
    )


def test_params_round_trip() -> None:
    case = case_from_text("vgg11", "shrink:3", batch_size=8, optimizer="adam")
    assert TrainingCase.from_params(case.params()) == case


def test_all_cases_lists_full_every_shrink_and_every_grow() -> None:
    labels = [c.label for c in all_cases(native_spec("vgg16"), batch_size=4)]
    assert labels == ["full", "shrink:5", "shrink:4", "shrink:3", "shrink:2",
                      "grow:1", "grow:2", "grow:3", "grow:4", "grow:5"]


def test_grow_freezes_exactly_the_prefix() -> None:
    prepared = build_step(case_from_text("cnn", "grow:3", batch_size=2))
    modules = prepared.step.sub.modules
    trainable = {n for n, m in modules.items() if all(p.requires_grad for p in m.parameters())}
    frozen = {n for n, m in modules.items() if not any(p.requires_grad for p in m.parameters())}
    assert trainable == {"block3", "om3.basic4", "om3.head"}
    assert frozen == {"block1", "block2"}


def test_shrink_trains_the_output_module_of_the_block_before() -> None:
    """ProFL's default fit (fit_scope="module"): basic3 and the copies of basic4 and the head."""
    prepared = build_step(case_from_text("cnn", "shrink:3", batch_size=2))
    trained = {id(p) for p in prepared.trainable_parameters()}
    modules = prepared.step.sub.modules
    om2 = {id(p) for name in ("om2.basic3", "om2.basic4", "om2.head")
           for p in modules[name].parameters()}
    assert trained == om2


def test_build_step_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    build_step(case_from_text("cnn", "grow:2", batch_size=2),
               generator=torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("text", ["full", "grow:1", "grow:2", "grow:4", "shrink:2", "shrink:4",
                                  "depth:2", "trunc:3"])
def test_every_module_of_a_step_is_on_the_target_device(text: str) -> None:
    """Built for the meta device (a stand-in for CUDA), every parameter, buffer, the batch and
    the optimizer state after a step live there; a module left on the CPU fails the step."""
    prepared = build_step(case_from_text("cnn", text, batch_size=2), device="meta")
    prepared.run()
    tensors = [t for m in prepared.modules() for t in (*m.parameters(), *m.buffers())]
    tensors += [v for s in prepared.optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0]
    assert {t.device.type for t in tensors} == {"meta"}
    assert prepared.inputs.device.type == "meta"


def test_foreach_case_builds_a_foreach_optimizer() -> None:
    case = case_from_text("cnn", "grow:2", batch_size=2, foreach=True)
    assert build_step(case).optimizer.defaults["foreach"] is True
    assert case.key == "cnn/grow:2/bs2/foreach"
