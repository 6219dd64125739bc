"""Memory of user models (``pkg.module:factory``) and torchvision models, every kind.

Oracles: the ``dispatch`` probe on real CPU tensors for ``predict`` (fake tensors, nothing
allocated), the ``heap`` probe (the allocator's own events) for the predicted heap, and for
torchvision's ResNet18 a hand count from ``numel * element_size`` and autograd's saved tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from profl_core.memory import case_from_text, dispatch, heap, predict
from profl_core.memory.report import MemoryReport
from profl_core.memory.step import PreparedStep, build_step
from tests.conftest import importable_module

MODULE = "profl_test_user_memory_models"
SOURCE = '''
from torch import nn


def conv(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


def head(cin, num_classes):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, num_classes))


def seq(num_classes):
    return nn.Sequential(conv(3, 8, 1), conv(8, 16, 2), conv(16, 32, 2), head(32, num_classes))


class Listed(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(conv(3, 8, 1), conv(8, 8, 1), conv(8, 16, 2),
                                      conv(16, 16, 1), conv(16, 32, 2))
        self.classifier = head(32, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def listed(num_classes):
    return Listed(num_classes), ["features.0-1", "features.2-3", "features.4", "classifier"]
'''


@pytest.fixture(scope="module", autouse=True)
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The user's module, importable from a temporary folder."""
    with importable_module(tmp_path_factory.mktemp("user"), MODULE, SOURCE):
        yield


#: Every case of a model with T = 3 blocks: each kind at each of its steps.
EVERY_CASE_T3 = ["full", "grow:1", "grow:2", "grow:3", "shrink:2", "shrink:3", "depth:1",
                 "depth:2", "depth:3", "trunc:1", "trunc:2", "trunc:3"]


@pytest.mark.parametrize("text", EVERY_CASE_T3)
@pytest.mark.parametrize("factory", ["seq", "listed"])
def test_user_model_predict_equals_dispatch(factory: str, text: str) -> None:
    case = case_from_text(f"{MODULE}:{factory}", text, batch_size=4)
    assert predict.measure(case, heap=False).tensor_peak_bytes == dispatch.measure(
        case).tensor_peak_bytes


@pytest.mark.parametrize("text", ["full", "grow:1", "shrink:2"])
def test_user_model_predicted_heap_is_the_heap_probe(text: str) -> None:
    """Within 64 bytes: element-wise ops with a Python scalar keep a 0-d wrapped scalar (8-12
    bytes) that the scratch model does not model (profl_core/memory/scratch.py)."""
    case = case_from_text(f"{MODULE}:seq", text, batch_size=4)
    predicted = predict.measure(case, threads=1).heap_peak_bytes
    measured = heap.measure(case, threads=1).heap_peak_bytes
    assert predicted is not None
    assert measured is not None
    assert abs(predicted - measured) <= 64


#: Each kind of torchvision's models at its first and last step (T = 5 and T = 4).
TORCHVISION_CASES = [
    ("mobilenet_v3_small", text) for text in
    ("full", "grow:1", "grow:5", "shrink:2", "shrink:5", "depth:2", "trunc:3")
] + [
    ("resnet18", text) for text in
    ("full", "grow:2", "grow:4", "shrink:2", "shrink:4", "depth:1", "trunc:4")
]


@pytest.mark.parametrize(("family", "text"), TORCHVISION_CASES)
def test_torchvision_predict_equals_dispatch(family: str, text: str) -> None:
    case = case_from_text(f"torchvision:{family}", text, batch_size=2)
    assert predict.measure(case, heap=False).tensor_peak_bytes == dispatch.measure(
        case).tensor_peak_bytes


def test_torchvision_predicted_heap_is_the_heap_probe() -> None:
    """Within 64 bytes, as for the user model (0-d wrapped scalars are not modelled)."""
    case = case_from_text("torchvision:mobilenet_v3_small", "grow:2", batch_size=8)
    predicted = predict.measure(case, threads=1).heap_peak_bytes
    measured = heap.measure(case, threads=1).heap_peak_bytes
    assert predicted is not None
    assert measured is not None
    assert abs(predicted - measured) <= 64


# --- torchvision ResNet18, full model, batch 8, 3x32x32: a hand count ----------------------------


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class HandCount:
    """``numel * element_size`` of the step's tensors and the storages autograd saves."""

    def __init__(self, prepared: PreparedStep) -> None:
        params = [p for m in prepared.modules() for p in m.parameters()]
        buffers = [b for m in prepared.modules() for b in m.buffers()]
        assert prepared.labels is not None
        batch = [prepared.inputs, prepared.labels]
        self.params_bytes = _bytes(params)
        self.buffer_bytes = _bytes(buffers)
        self.input_bytes = _bytes(batch)
        self.largest_param_bytes = max(p.numel() * p.element_size() for p in params)
        owned = {t.untyped_storage().data_ptr() for t in [*params, *buffers, *batch]}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in owned:  # one count per storage (views, in-place ops)
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = prepared.step.run(prepared.inputs, prepared.labels)
        self.saved_activation_bytes = sum(saved.values())
        self.loss_bytes = loss.numel() * loss.element_size()

    @property
    def total_bytes(self) -> int:
        """Parameters + gradients + momentum + saved activations (+ buffers and the batch)."""
        return (3 * self.params_bytes + self.saved_activation_bytes + self.buffer_bytes
                + self.input_bytes)


@pytest.fixture(scope="module")
def resnet18_full() -> tuple[HandCount, MemoryReport]:
    torch.set_num_threads(1)
    prepared = build_step(case_from_text("torchvision:resnet18", "full", batch_size=8))
    prepared.run()  # warm-up: momentum buffers exist
    count = HandCount(prepared)  # a second step, with autograd's saved tensors recorded
    return count, dispatch.measure_step(prepared, warmup=False)


def test_resnet18_live_activations_after_forward_are_autograds_saved_tensors(
    resnet18_full: tuple[HandCount, MemoryReport],
) -> None:
    count, report = resnet18_full
    assert report.extra["after_forward.activation"] == (count.saved_activation_bytes
                                                        + count.loss_bytes)


def test_resnet18_full_peak_is_the_hand_count_within_5_percent(
    resnet18_full: tuple[HandCount, MemoryReport],
) -> None:
    """Tolerance: the peak is in SGD's step, where backward has freed the saved activations
    (3.4 MiB) and weight decay holds one temporary the size of the largest parameter
    (layer4's 512x512x3x3 convolution, 9.0 MiB): +4.2% over the hand count here."""
    count, report = resnet18_full
    assert report.tensor_peak_bytes == pytest.approx(count.total_bytes, rel=0.05)


def test_resnet18_full_peak_is_all_gradients_momentum_and_one_weight_decay_temporary(
    resnet18_full: tuple[HandCount, MemoryReport],
) -> None:
    """The exact count at the peak (the optimizer step): what the tolerance above explains."""
    count, report = resnet18_full
    assert report.tensor_peak_bytes == (
        3 * count.params_bytes + count.buffer_bytes + count.input_bytes
        + count.largest_param_bytes + count.loss_bytes)
