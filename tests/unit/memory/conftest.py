"""Shared settings for the memory tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _memory_tests_on_one_thread(one_thread: None) -> None:
    """Every memory test runs on one intra-op thread (``one_thread``, tests/conftest.py)."""
