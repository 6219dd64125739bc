"""The rss probe: fresh processes, a positive delta, no blocks."""

from __future__ import annotations

import pytest

from profl_core.memory import case_from_text, measure


@pytest.mark.slow
def test_rss_reports_a_positive_delta_without_blocks() -> None:
    report = measure(case_from_text("cnn", "grow:2", batch_size=16), probe="rss")
    assert (report.tensor_peak_bytes > 0, report.blocks, report.peak_at) == (True, (), None)
