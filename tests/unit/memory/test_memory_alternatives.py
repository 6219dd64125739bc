"""Memory kinds of the single-device alternatives: ``accum:k``, ``ckpt``, ``amp`` and their
combinations with every base (case text, key, the client step they build, and every probe).

Oracles: the dispatch probe on real tensors for ``predict``'s tensor peaks, the heap probe
(the CPU allocator's own events) for ``predict``'s heap peaks, ``numel * element_size`` for
the fp32 master weights, the plain step's peak for the peaks that must fall.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.cli import main
from profl_core.errors import ConfigError
from profl_core.memory import dispatch, heap, measure, predict
from profl_core.memory.case import TrainingCase
from profl_core.memory.case_text import case_from_text, parse_case_text
from profl_core.memory.step import build_step
from profl_core.models import native_spec

# --- case text --------------------------------------------------------------------------------


def test_a_bare_modifier_has_the_base_full() -> None:
    assert case_from_text("cnn", "accum:4", batch_size=64) == case_from_text(
        "cnn", "full+accum:4", batch_size=64)


def test_modifier_order_does_not_make_another_case() -> None:
    assert case_from_text("cnn", "accum:4+ckpt", batch_size=64) == case_from_text(
        "cnn", "ckpt+accum:4", batch_size=64)


def test_label_writes_modifiers_in_canonical_order() -> None:
    case = case_from_text("cnn", "grow:2+accum:4+amp+ckpt", batch_size=64)
    assert case.label == "grow:2+ckpt+amp+accum:4"


def test_key_holds_base_modifiers_and_batch() -> None:
    case = case_from_text("resnet18", "accum:8+amp", batch_size=64)
    assert case.key == "resnet18/full+amp+accum:8/bs64"


def test_base_label_is_the_memory_plan_key() -> None:
    assert case_from_text("cnn", "shrink:3+ckpt", batch_size=8).base_label == "shrink:3"


def test_plain_case_label_is_unchanged() -> None:
    assert case_from_text("cnn", "grow:2", batch_size=8).key == "cnn/grow:2/bs8"


def test_amp_bf16_is_amp() -> None:
    assert case_from_text("cnn", "amp:bf16", batch_size=8).label == "full+amp"


def test_amp_fp16_is_float16_autocast() -> None:
    assert case_from_text("cnn", "amp:fp16", batch_size=8).autocast == "float16"


def test_parsed_text_carries_every_option() -> None:
    parsed = parse_case_text("depth:2+ckpt+amp+accum:2", blocks=4)
    assert parsed.options() == {"micro_batches": 2, "checkpoint": True, "autocast": "bfloat16"}


def test_params_round_trip_with_modifiers() -> None:
    case = case_from_text("vgg11", "shrink:3+ckpt+accum:2", batch_size=8)
    assert TrainingCase.from_params(case.params()) == case


@pytest.mark.parametrize(("text", "named"), [
    ("full+bogus", "unknown modifier"),
    ("full+accum:4+accum:2", "accum given twice"),
    ("amp+amp:fp16", "amp given twice"),
    ("full+accum:1", "accum:1 is the plain step"),
    ("full+accum:x", "whole k"),
    ("accum", "whole k"),
    ("full+ckpt:2", "ckpt takes no argument"),
    ("full+amp:fp8", "amp:fp16"),
    ("full+grow:2", "a second base"),
    ("accum:2+grow:2", "the base grow:2 comes first"),
    ("grow:9+ckpt", "grow:T with T in 1..4"),
    ("full+", "unknown modifier"),
])
def test_bad_case_text_is_one_line_naming_the_fix(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        case_from_text("cnn", text, batch_size=64)
    assert named in str(err.value)
    assert "\n" not in str(err.value)


def test_accum_must_divide_the_batch_size() -> None:
    with pytest.raises(ConfigError, match=r"full\+accum:3: 3 does not divide the batch size "
                                          r"64; use a k that divides it \(2, 4, 8, 16, 32, 64\)"):
        case_from_text("cnn", "accum:3", batch_size=64)


def test_option_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="micro_batches is set by the case text"):
        case_from_text("cnn", "accum:2", batch_size=8, micro_batches=2)


# --- the client step of a case ----------------------------------------------------------------


def test_case_step_task_gets_the_modifiers() -> None:
    task = build_step(case_from_text("cnn", "grow:2+ckpt+amp+accum:4", batch_size=8)).step.task
    assert task.submodel == "grow:2"
    assert task.micro_batches == 4
    assert task.checkpoint is True
    assert task.autocast == "bfloat16"


# --- what the probes count ----------------------------------------------------------------------


def dispatch_peak(text: str, batch_size: int = 64, model: str = "cnn") -> int:
    return dispatch.measure(case_from_text(model, text, batch_size=batch_size)).tensor_peak_bytes


def test_accum_peak_falls_with_k() -> None:
    """cnn full at batch 64: each doubling of k lowers the tensor peak (dispatch)."""
    peaks = [dispatch_peak("full")] + [dispatch_peak(f"full+accum:{k}") for k in (2, 4, 8)]
    assert peaks[1] < peaks[0]
    assert peaks[2] < peaks[1]
    assert peaks[3] < peaks[2]


def test_ckpt_peak_is_below_the_plain_step_on_large_activations() -> None:
    """cnn full at batch 64: activations dominate the plain step's peak."""
    assert dispatch_peak("full+ckpt") < dispatch_peak("full")


def test_amp_peak_counts_fp32_weights_gradients_and_momentum() -> None:
    """At least params + grads + SGD momentum of the trainable fp32 parameters are live at
    the peak (``numel * element_size`` of the weights after the step)."""
    case = case_from_text("cnn", "full+amp", batch_size=8)
    prepared = build_step(case)
    report = dispatch.measure_step(prepared)
    params = prepared.trainable_parameters()
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    assert {str(p.dtype) for p in params} == {"torch.float32"}
    assert report.tensor_peak_bytes >= 3 * weight_bytes


def test_amp_lowers_the_activation_peak() -> None:
    assert dispatch_peak("full+amp") < dispatch_peak("full")


@pytest.mark.parametrize("text", ["full+accum:4", "grow:2+ckpt", "full+amp",
                                  "shrink:3+ckpt+amp+accum:2"])
def test_predict_tensor_report_equals_dispatch(text: str) -> None:
    """Every tensor figure (peak, breakdown, per-block peaks, checkpoints), byte for byte."""
    case = case_from_text(replace(native_spec("cnn"), width=0.5), text, batch_size=4)
    real = dispatch.measure(case).to_dict()
    fake = predict.measure(case, heap=False).to_dict()
    real.pop("probe")
    fake.pop("probe")
    assert fake == real


@pytest.mark.parametrize(("model", "text"), [("cnn", "full+accum:4"), ("cnn", "grow:2+ckpt"),
                                             ("cnn", "full+amp"), ("vit", "full+amp")])
def test_predicted_heap_peak_equals_the_heap_probe(model: str, text: str) -> None:
    """vit's bf16 GEMMs, mixed-dtype adds and fp32 layer-norm statistics included."""
    case = case_from_text(replace(native_spec(model), width=0.5), text, batch_size=4)
    assert predict.measure(case, threads=1).heap_peak_bytes == heap.measure(
        case, threads=1).heap_peak_bytes


@pytest.mark.parametrize("text", ["full+accum:4", "grow:2+ckpt", "full+amp"])
def test_predicted_block_heap_peaks_are_the_heap_probes_within_wrapped_scalars(text: str) -> None:
    """Per (block, phase): equal up to the 0-d wrapped scalars (8-12 B) of element-wise ops
    with a Python number, which the scratch model does not model on fp32 ops."""
    case = case_from_text(replace(native_spec("cnn"), width=0.5), text, batch_size=4)
    fake, real = predict.measure(case, threads=1), heap.measure(case, threads=1)
    gaps = [abs((a.heap_peak_bytes or 0) - (b.heap_peak_bytes or 0))
            for a, b in zip(fake.blocks, real.blocks, strict=True)]
    assert max(gaps) <= 32


def test_predict_refuses_fp16_autocast_with_one_line() -> None:
    with pytest.raises(ConfigError, match="predict cannot run amp:fp16") as err:
        measure(case_from_text("cnn", "amp:fp16", batch_size=4), probe="predict")
    assert "\n" not in str(err.value)


def test_fp16_autocast_is_measured_by_the_heap_probe() -> None:
    report = measure(case_from_text("cnn", "amp:fp16", batch_size=4), probe="heap", threads=1)
    assert report.heap_peak_bytes is not None
    assert report.heap_peak_bytes >= report.tensor_peak_bytes


# --- profl trace ------------------------------------------------------------------------------


def test_trace_measures_a_case_with_modifiers(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "--model", "cnn", "--batch-size", "4", "--case", "grow:2+accum:2",
                 "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["case_key"] == "cnn/grow:2+accum:2/bs4"


def test_trace_case_text_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "--model", "cnn", "--batch-size", "64", "--case", "full+accum:3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert "does not divide the batch size 64" in err[0]
