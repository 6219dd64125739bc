"""The dispatch probe against first principles: numel * element_size and hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from profl_core.memory import Category, MemoryReport, case_from_text
from profl_core.memory.dispatch import measure_step
from profl_core.memory.step import (
    PreparedStep,
    build_step,
    construct_model,
    prepare_step,
)
from profl_core.models import native_spec
from profl_core.models.cnn import conv_bn_relu


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measured(model: str, text: str, batch_size: int = 4) -> tuple[PreparedStep, MemoryReport]:
    """Measure ``model`` (``name`` or ``name@width``) on its native input."""
    name, _, width = model.partition("@")
    spec = native_spec(name, width=float(width or 1.0))
    prepared = build_step(case_from_text(spec, text, batch_size=batch_size))
    return prepared, measure_step(prepared)


@pytest.fixture(scope="module", params=["full", "grow:2"])
def cnn_case(request: pytest.FixtureRequest) -> tuple[PreparedStep, MemoryReport]:
    return measured("cnn", request.param)


def test_parameter_bytes_match_numel(cnn_case: tuple[PreparedStep, MemoryReport]) -> None:
    prepared, report = cnn_case
    expected = (nbytes(prepared.trainable_parameters()), nbytes(prepared.frozen_parameters()))
    got = (report.extra["before_step.param_trainable"],
           report.extra.get("before_step.param_frozen", 0))
    assert got == expected


def test_gradient_bytes_after_backward_match_numel(
    cnn_case: tuple[PreparedStep, MemoryReport],
) -> None:
    prepared, report = cnn_case
    assert report.extra["after_backward.gradient"] == nbytes(prepared.trainable_parameters())


def test_optimizer_state_is_one_momentum_buffer_per_trainable_parameter(
    cnn_case: tuple[PreparedStep, MemoryReport],
) -> None:
    prepared, report = cnn_case
    state = [v for s in prepared.optimizer.state.values() for v in s.values()
             if isinstance(v, torch.Tensor)]
    expected = nbytes(prepared.trainable_parameters())
    assert (report.extra["before_step.optimizer_state"], nbytes(state)) == (expected, expected)


def test_zero_grad_frees_every_gradient(cnn_case: tuple[PreparedStep, MemoryReport]) -> None:
    _, report = cnn_case
    assert "after_step.gradient" not in report.extra


def test_input_bytes_are_the_batch_and_labels(cnn_case: tuple[PreparedStep, MemoryReport]) -> None:
    prepared, report = cnn_case
    assert report.extra["before_step.input"] == nbytes([prepared.inputs, prepared.labels])


def test_peak_is_the_largest_block_peak(cnn_case: tuple[PreparedStep, MemoryReport]) -> None:
    _, report = cnn_case
    top = max(report.blocks, key=lambda b: b.tensor_peak_bytes)
    assert top.tensor_peak_bytes == report.tensor_peak_bytes
    assert (top.block, top.phase) == report.peak_at


def test_peak_breakdown_sums_to_the_peak(cnn_case: tuple[PreparedStep, MemoryReport]) -> None:
    _, report = cnn_case
    assert sum(report.peak_breakdown.values()) == report.tensor_peak_bytes


def test_frozen_prefix_has_no_gradients_and_no_backward_segment() -> None:
    prepared, report = measured("resnet18@0.25", "grow:3")
    backward = {b.block for b in report.blocks if b.phase == "backward"}
    frozen_grads = [p.grad for p in prepared.frozen_parameters()]
    assert backward == {"loss", "om3.head", "om3.basic4", "block3"}
    assert frozen_grads == [None] * len(frozen_grads)


class WideStem(nn.Module):
    """cnn's block 1 with a 4x wider hidden layer but the same output shape."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(1, 128, 1), *conv_bn_relu(128, 32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_wider_frozen_block_keeps_no_activations_or_gradients() -> None:
    """Widening frozen block 1 changes neither what survives the forward nor block 3's backward."""
    case = case_from_text("cnn", "grow:3", batch_size=8)
    plain = measure_step(build_step(case))
    model = construct_model(case)
    model.block1 = WideStem()
    wide = measure_step(prepare_step(case, model))

    def kept(report: MemoryReport) -> tuple[int, int, int]:
        backward = report.block_peak("block3", "backward")
        assert backward is not None
        return (
            report.extra["after_forward.activation"],
            report.extra["after_backward.gradient"],
            backward.breakdown[Category.ACTIVATION] + backward.breakdown[Category.TEMPORARY],
        )

    assert (kept(wide), wide.extra["before_step.param_frozen"] > plain.extra[
        "before_step.param_frozen"]) == (kept(plain), True)


def test_saved_activation_bytes_match_saved_tensors_hooks() -> None:
    """Activations alive after the forward = unique storages autograd saved + the loss scalar."""
    spec = native_spec("resnet18", width=0.25)
    prepared = build_step(case_from_text(spec, "grow:2", batch_size=4))
    prepared.run()
    params = {p.untyped_storage().data_ptr() for m in prepared.modules() for p in m.parameters()}
    params |= {b.untyped_storage().data_ptr() for m in prepared.modules() for b in m.buffers()}
    assert prepared.labels is not None
    inputs = {t.untyped_storage().data_ptr() for t in (prepared.inputs, prepared.labels)}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params | inputs:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = prepared.step.run(prepared.inputs, prepared.labels)
    report = measure_step(prepared, warmup=False)
    loss_scalar = loss.numel() * loss.element_size()
    assert report.extra["after_forward.activation"] == sum(saved.values()) + loss_scalar
