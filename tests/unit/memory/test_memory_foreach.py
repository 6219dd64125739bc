"""The CUDA optimizer (``foreach`` kernels) modelled on the CPU when a case asks for it."""

from __future__ import annotations

from profl_core.memory import case_from_text, measure
from profl_core.memory.categories import Category


def test_foreach_temporaries_are_counted_by_predict_exactly_as_dispatch_sees_them() -> None:
    """vgg11 grow:4 at batch 2: the peak is the optimizer step (large trainable blocks)."""
    case = case_from_text("vgg11", "grow:4", batch_size=2, foreach=True)
    predicted = measure(case, probe="predict").tensor_peak_bytes
    assert predicted == measure(case, probe="dispatch").tensor_peak_bytes


def test_foreach_holds_more_temporaries_at_the_optimizer_step_than_the_loop() -> None:
    """The multi-tensor kernels hold temporaries for many parameters at once; the loop holds
    one parameter's at a time."""
    loop = measure(case_from_text("vgg11", "grow:4", batch_size=2, foreach=False))
    multi = measure(case_from_text("vgg11", "grow:4", batch_size=2, foreach=True))
    loop_peak = loop.block_peak("optimizer", "optimizer")
    multi_peak = multi.block_peak("optimizer", "optimizer")
    assert loop_peak is not None
    assert multi_peak is not None
    loop_temporary = loop_peak.breakdown.get(Category.TEMPORARY, 0)
    assert multi_peak.breakdown[Category.TEMPORARY] > loop_temporary
    assert multi_peak.tensor_peak_bytes > loop_peak.tensor_peak_bytes
