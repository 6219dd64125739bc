"""MemoryReport JSON round trip and validation."""

from __future__ import annotations

import pytest

from profl_core.errors import ConfigError
from profl_core.memory import MemoryReport, case_from_text
from profl_core.memory.dispatch import measure


def test_report_round_trips_through_json() -> None:
    report = measure(case_from_text("cnn", "grow:2", batch_size=2))
    assert MemoryReport.from_json(report.to_json()) == report


def test_from_json_rejects_unknown_keys_with_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown key 'bogus'") as err:
        MemoryReport.from_dict({"bogus": 1})
    assert "\n" not in str(err.value)
