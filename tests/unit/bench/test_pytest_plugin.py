"""The ``profl`` pytest plugin in a pytester session: the ``peak_memory`` marker passes under
its limit and fails over it with the per-block table; the ``profl_memory`` fixture returns the
report ``profl trace --json`` prints for the same case.

The inner sessions run in this process with ``--strict-markers`` and ``-p profl`` (the entry
point's name: loaded once either way, also where plugin autoloading is turned off).
"""

from __future__ import annotations

import contextlib
import io
import json
import tomllib
from pathlib import Path

import pytest

from bench.cli import main

pytest_plugins = ["pytester"]
MIB = 1 << 20
REPO = Path(__file__).resolve().parents[3]
INNER = ["--strict-markers", "-p", "profl", "-p", "no:cacheprovider"]


@pytest.fixture(scope="module")
def required_bytes() -> int:
    """``required_bytes`` of cnn grow:2 at batch 8, one thread, as ``profl trace --json``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["trace", "--model", "cnn", "--case", "grow:2", "--batch-size", "8",
                     "--threads", "1", "--json"])
    assert code == 0
    return int(json.loads(out.getvalue())["required_bytes"])


def _marked(max_mib: float) -> str:
    return f"""
import pytest

@pytest.mark.peak_memory(model="cnn", case="grow:2", batch_size=8, max_mib={max_mib!r})
def test_step():
    pass
"""


def test_the_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    """Declared in pyproject.toml (the inner sessions load it by that name: ``-p profl``)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["entry-points"]["pytest11"]["profl"] == "bench.pytest_plugin"


def test_the_marker_passes_under_the_limit(
    pytester: pytest.Pytester, required_bytes: int
) -> None:
    pytester.makepyfile(_marked(1.01 * required_bytes / MIB))
    pytester.runpytest(*INNER).assert_outcomes(passed=1)


def test_the_marker_fails_over_the_limit(
    pytester: pytest.Pytester, required_bytes: int
) -> None:
    pytester.makepyfile(_marked(0.99 * required_bytes / MIB))
    pytester.runpytest(*INNER).assert_outcomes(failed=1)


def test_a_failure_prints_the_per_block_table(
    pytester: pytest.Pytester, required_bytes: int
) -> None:
    pytester.makepyfile(_marked(0.99 * required_bytes / MIB))
    result = pytester.runpytest(*INNER)
    result.stdout.fnmatch_lines([
        "*peak_memory: cnn/grow:2/bs8 needs * MiB (required_bytes, predict probe) > max_mib=*",
        "| block *| phase *| tensor peak MiB *| heap peak MiB *|",
        "| om2.basic4 *| backward *",
    ])


def test_a_marker_with_an_unknown_option_fails_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
import pytest

@pytest.mark.peak_memory(model="cnn", max_mib=100, colour="red")
def test_step():
    pass
""")
    result = pytester.runpytest(*INNER)
    result.stdout.fnmatch_lines(["*peak_memory: unknown option 'colour'*"])


def test_the_fixture_returns_the_report_profl_trace_prints(
    pytester: pytest.Pytester, required_bytes: int
) -> None:
    pytester.makepyfile(f"""
from profl_core.memory import MemoryReport

def test_report(profl_memory):
    report = profl_memory(model="cnn", case="grow:2", batch_size=8)
    assert isinstance(report, MemoryReport)
    assert report.required_bytes == {required_bytes}
""")
    pytester.runpytest(*INNER).assert_outcomes(passed=1)
