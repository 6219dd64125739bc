"""The predict probe (fake tensors) equals the dispatch probe (real CPU tensors) byte for byte.

Tensor figures only (``heap=False``); the predicted heap is checked against the heap probe in
test_memory_heap.py.
"""

from __future__ import annotations

import pytest

from profl_core.memory import all_cases, dispatch, predict
from profl_core.memory.case import num_blocks
from profl_core.models import MODEL_NAMES, native_spec


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_predict_equals_dispatch_for_every_case(model: str) -> None:
    cases = all_cases(native_spec(model, width=0.25), batch_size=2)
    differing = []
    for case in cases:
        real = dispatch.measure(case).to_dict()
        fake = predict.measure(case, heap=False).to_dict()
        real.pop("probe")
        fake.pop("probe")
        if real != fake:
            differing.append(case.key)
    assert (len(cases), differing) == (2 * num_blocks(cases[0].model), [])


def test_predict_allocates_nothing_for_a_large_case() -> None:
    """A 2.6 GiB step is predicted in this process without allocating it."""
    report = predict.measure(all_cases(native_spec("vgg16"), batch_size=1024)[0], heap=False)
    assert report.tensor_peak_bytes > 2 << 30
