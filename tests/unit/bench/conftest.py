"""Fixtures of the bench unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_fixtures import write_suite


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A suite run folder: 3 seeds of profl, fedavg and profl-noshrink on two partitions, one
    fedavg seed and every profl-noshrink IID seed diverged; no memory section."""
    return write_suite(tmp_path / "run")
