"""The heap probe and the predicted heap against independent oracles.

Oracles: the dispatch probe (live tensors, an independent tracker), an op whose scratch is
known by construction (``profl_test::scratchy`` holds exactly SCRATCH_BYTES), a kernel-side
call counter, ``torch.get_num_threads()`` read inside the step, and the measured heap itself
for the acceptance check of ``predict`` (issue 11: within 5 % on the conv-heavy peaks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from memory_toy_step import CALLS, SCRATCH_BYTES, SCRATCHY, linear_step
from torch._subclasses.fake_tensor import FakeTensorMode

from profl_core.memory import build_step, case_from_text, dispatch, heap, measure, predict
from profl_core.memory.predict import FakeStorageTracker
from profl_core.memory.scratch import SCRATCH_OPS, ScratchModel, survey

# The conv-heavy peaks: (model, case, batch).
CONV_PEAKS = [("resnet18", "grow:2", 64), ("vgg11", "grow:2", 32), ("cnn", "grow:3", 64)]


@pytest.fixture(scope="module")
def scratch_model() -> ScratchModel:
    """One scratch cache for the module, as one process would share it."""
    return ScratchModel()


@pytest.fixture
def counted() -> None:
    CALLS["scratchy"] = 0


def test_heap_probe_reads_above_the_tensor_probe_on_a_conv_step() -> None:
    case = case_from_text("cnn", "grow:3", batch_size=64)
    tensor = dispatch.measure(case)
    measured = heap.measure(case)
    assert measured.heap_peak_bytes is not None
    assert measured.heap_peak_bytes > tensor.tensor_peak_bytes


def test_heap_probe_tensor_peak_is_the_dispatch_peak() -> None:
    case = case_from_text("cnn", "grow:3", batch_size=64)
    assert heap.measure(case).tensor_peak_bytes == dispatch.measure(case).tensor_peak_bytes


def test_heap_probe_on_a_linear_step_is_the_tensor_peak_within_a_kilobyte() -> None:
    """Linear layers hold no c10 scratch (a few 0-d wrapped scalars at most)."""
    measured = heap.measure_step(linear_step())
    tensor = dispatch.measure_step(linear_step())
    assert measured.heap_peak_bytes is not None
    assert abs(measured.heap_peak_bytes - tensor.tensor_peak_bytes) <= 1024


def test_heap_probe_charges_known_scratch_to_its_segment() -> None:
    report = heap.measure_step(linear_step(scratch=True))
    segment = report.block_peak("scratch", "forward")
    assert segment is not None
    assert segment.heap_peak_bytes is not None
    assert segment.heap_peak_bytes - segment.tensor_peak_bytes == SCRATCH_BYTES


def test_predicted_heap_adds_the_measured_scratch_of_its_segment(counted: None) -> None:
    model = ScratchModel(ops={SCRATCHY})
    with FakeTensorMode(), torch.device("cpu"):
        step = linear_step(scratch=True)
        step.run()
        tracker = FakeStorageTracker(model, threads=1)
        tracker.track_step(step)  # type: ignore[arg-type]
        report = tracker.report(probe="predict", device="cpu", case_key="toy", threads=1)
    segment = report.block_peak("scratch", "forward")
    assert segment is not None
    assert segment.heap_peak_bytes is not None
    assert segment.heap_peak_bytes - segment.tensor_peak_bytes == SCRATCH_BYTES


def test_scratch_of_an_op_is_what_its_kernel_holds_beyond_its_output(counted: None) -> None:
    model = ScratchModel(ops={SCRATCHY})
    x = torch.randn(32, 8)
    assert model.scratch_bytes(SCRATCHY.default, (x,), {}, threads=1) == SCRATCH_BYTES


def test_scratch_cache_hit_does_not_run_the_op_again(counted: None) -> None:
    model = ScratchModel(ops={SCRATCHY})
    x = torch.randn(32, 8)
    model.scratch_bytes(SCRATCHY.default, (x,), {}, threads=1)
    runs = CALLS["scratchy"]
    model.scratch_bytes(SCRATCHY.default, (torch.zeros(32, 8),), {}, threads=1)
    assert CALLS["scratchy"] == runs


def test_scratch_is_measured_again_for_another_shape(counted: None) -> None:
    model = ScratchModel(ops={SCRATCHY})
    model.scratch_bytes(SCRATCHY.default, (torch.randn(32, 8),), {}, threads=1)
    runs = CALLS["scratchy"]
    model.scratch_bytes(SCRATCHY.default, (torch.randn(16, 8),), {}, threads=1)
    assert CALLS["scratchy"] > runs


def test_scratch_cache_file_is_reused_without_running(tmp_path: Path, counted: None) -> None:
    path = tmp_path / "scratch.json"
    first = ScratchModel(path, ops={SCRATCHY})
    first.scratch_bytes(SCRATCHY.default, (torch.randn(32, 8),), {}, threads=1)
    first.save()
    runs = CALLS["scratchy"]
    again = ScratchModel(path, ops={SCRATCHY})
    assert again.scratch_bytes(SCRATCHY.default, (torch.randn(32, 8),), {}, threads=1) == (
        SCRATCH_BYTES
    )
    assert CALLS["scratchy"] == runs


def test_ops_outside_the_model_have_no_scratch(counted: None) -> None:
    model = ScratchModel(ops=())
    assert model.scratch_bytes(SCRATCHY.default, (torch.randn(32, 8),), {}, threads=1) == 0
    assert CALLS["scratchy"] == 0


@pytest.mark.parametrize(("model", "text", "batch"), [("cnn", "full", 16), ("vit", "full", 4)])
def test_every_op_holding_scratch_is_modelled(model: str, text: str, batch: int) -> None:
    """A real step run op by op: every op whose kernel holds over 1 KiB is in SCRATCH_OPS."""
    prepared = build_step(case_from_text(model, text, batch_size=batch))
    prepared.run()
    found = {s.op.rsplit(".", 1)[0] for s in survey(prepared) if s.max_scratch_bytes > 1024}
    assert found - {str(op) for op in SCRATCH_OPS} == set()


def test_threads_argument_is_used_and_the_previous_count_restored() -> None:
    torch.set_num_threads(1)
    step = linear_step()
    report = heap.measure_step(step, threads=2)
    assert step.threads_seen == [2, 2]
    assert report.threads == 2
    assert torch.get_num_threads() == 1


def test_threads_are_restored_when_the_step_fails() -> None:
    torch.set_num_threads(1)
    step = linear_step()
    step.labels = torch.full_like(step.labels, 99)  # out of range for 10 classes
    with pytest.raises((IndexError, RuntimeError)):
        heap.measure_step(step, threads=2)
    assert torch.get_num_threads() == 1


def test_predict_threads_argument_restores_the_previous_count() -> None:
    torch.set_num_threads(1)
    report = predict.measure(case_from_text("cnn", "grow:2", batch_size=2), threads=2)
    assert report.threads == 2
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(("model", "text", "batch"), CONV_PEAKS)
@pytest.mark.parametrize("threads", [1, 2])
def test_predicted_heap_is_within_5_percent_of_the_heap_probe(
    model: str, text: str, batch: int, threads: int, scratch_model: ScratchModel
) -> None:
    case = case_from_text(model, text, batch_size=batch)
    predicted = predict.measure(case, threads=threads, scratch=scratch_model)
    measured = heap.measure(case, threads=threads)
    assert predicted.heap_peak_bytes == pytest.approx(measured.heap_peak_bytes, rel=0.05)


def test_measure_heap_probe_reports_heap_and_threads() -> None:
    report = measure(case_from_text("cnn", "grow:3", batch_size=8), probe="heap", threads=1)
    assert (report.probe, report.threads) == ("heap", 1)
    assert report.heap_peak_bytes is not None


def test_predict_without_heap_has_no_heap_figure() -> None:
    report = predict.measure(case_from_text("cnn", "grow:2", batch_size=2), heap=False)
    assert (report.heap_peak_bytes, report.threads) == (None, None)
