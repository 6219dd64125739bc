"""MemoryReport JSON round trip and validation."""

from __future__ import annotations

import json

import pytest

from profl_core.errors import ConfigError
from profl_core.memory import BlockPeak, MemoryReport, case_from_text
from profl_core.memory.dispatch import measure


def test_report_round_trips_through_json() -> None:
    report = measure(case_from_text("cnn", "grow:2", batch_size=2))
    assert MemoryReport.from_json(report.to_json()) == report


def test_from_json_rejects_unknown_keys_with_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown key 'bogus'") as err:
        MemoryReport.from_dict({"bogus": 1})
    assert "\n" not in str(err.value)


def _report(*, heap: int | None) -> MemoryReport:
    return MemoryReport(
        probe="heap", device="cpu", case_key="cnn/grow:2/bs2", before_step_bytes=100,
        tensor_peak_bytes=1000, peak_at=("block2", "backward"), heap_peak_bytes=heap,
        heap_peak_at=None if heap is None else ("block1", "forward"),
        threads=None if heap is None else 2,
        blocks=(BlockPeak(block="block1", phase="forward", tensor_peak_bytes=900,
                          heap_peak_bytes=heap),),
    )


def test_report_round_trip_keeps_the_heap_figures() -> None:
    report = _report(heap=1500)
    assert MemoryReport.from_json(report.to_json()) == report


def test_report_json_names_both_peaks() -> None:
    data = json.loads(_report(heap=1500).to_json())
    assert (data["tensor_peak_bytes"], data["heap_peak_bytes"]) == (1000, 1500)
    assert data["blocks"][0]["heap_peak_bytes"] == 1500


def test_report_round_trip_keeps_an_unknown_heap() -> None:
    report = _report(heap=None)
    assert MemoryReport.from_json(report.to_json()) == report


def test_required_bytes_is_the_heap_peak_when_known() -> None:
    assert _report(heap=1500).required_bytes == 1500


def test_required_bytes_is_the_tensor_peak_without_a_heap_figure() -> None:
    assert _report(heap=None).required_bytes == 1000


def test_heap_step_bytes_is_the_heap_peak_over_the_baseline() -> None:
    assert (_report(heap=1500).heap_step_bytes, _report(heap=None).heap_step_bytes) == (1400, None)


def test_old_reports_with_peak_bytes_are_refused_with_one_line() -> None:
    data = _report(heap=None).to_dict()
    data["peak_bytes"] = data.pop("tensor_peak_bytes")
    with pytest.raises(ConfigError, match="unknown key 'peak_bytes'") as err:
        MemoryReport.from_dict(data)
    assert "\n" not in str(err.value)
