"""The ``profl`` pytest plugin in a pytester session: the ``peak_memory`` marker passes under
its limit and fails over it with the per-block table; the ``profl_memory`` fixture returns the
report ``profl trace --json`` prints for the same case. Given a suite's model spec (``blocks``),
the marker measures the suite's case (``profl trace --blocks`` gives its bytes, the suite its
key); a bad spec field and a model whose forward takes two inputs fail with one line.

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
from bench.suites import load_suite

pytest_plugins = ["pytester"]
MIB = 1 << 20
REPO = Path(__file__).resolve().parents[3]
INNER = ["--strict-markers", "-p", "profl", "-p", "no:cacheprovider"]
#: A partition of cnn of its own, as a suite's ``[memory.model_spec."cnn"]`` table gives it.
BLOCKS = ["block1+block2", "block3+block4", "head"]
#: A user model whose forward takes two inputs.
TWO_INPUTS = """
from torch import nn


class TwoInputs(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.flat = nn.Flatten()
        self.head = nn.Linear(4 * 32 * 32, num_classes)

    def forward(self, x, y):
        return self.head(self.flat(self.conv(x) + self.conv(y)))


def build(num_classes: int = 10) -> nn.Module:
    return TwoInputs(num_classes)
"""


@pytest.fixture(scope="module")
def required_bytes() -> int:
    """``required_bytes`` of cnn grow:2 at batch 8, one thread, as ``profl trace --json``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["trace", "--model", "cnn", "--case", "grow:2", "--batch-size", "8",
                     "--threads", "1", "--json"])
    assert code == 0
    return int(json.loads(out.getvalue())["required_bytes"])


def _trace_json(*args: str) -> dict[str, object]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["trace", *args, "--json"])
    assert code == 0
    return dict(json.loads(out.getvalue()))


@pytest.fixture(scope="module")
def blocked_required_bytes() -> int:
    """``required_bytes`` of cnn grow:2 at batch 8 on :data:`BLOCKS`, as ``profl trace``."""
    report = _trace_json("--model", "cnn", "--blocks", ",".join(BLOCKS), "--case", "grow:2",
                         "--batch-size", "8", "--threads", "1")
    return int(str(report["required_bytes"]))


def _marked(max_mib: float, spec: str = "") -> str:
    return f"""
import pytest

@pytest.mark.peak_memory(model="cnn", case="grow:2", batch_size=8, max_mib={max_mib!r}{spec})
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


def test_the_marker_with_blocks_measures_what_profl_trace_of_those_blocks_measures(
    pytester: pytest.Pytester, blocked_required_bytes: int, required_bytes: int
) -> None:
    assert blocked_required_bytes != required_bytes  # the partition matters for this case
    pytester.makepyfile(_marked(blocked_required_bytes / MIB, f", blocks={BLOCKS!r}"))
    pytester.runpytest(*INNER).assert_outcomes(passed=1)  # at the limit: within it


def test_the_marker_with_blocks_fails_just_under_profl_traces_bytes(
    pytester: pytest.Pytester, blocked_required_bytes: int
) -> None:
    pytester.makepyfile(_marked(0.999 * blocked_required_bytes / MIB, f", blocks={BLOCKS!r}"))
    pytester.runpytest(*INNER).assert_outcomes(failed=1)


def test_the_marker_failure_names_the_suites_case_key(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    suite = tmp_path / "memory.toml"
    suite.write_text(f'name = "s"\n[memory]\nmodels = ["cnn"]\nbatch_size = 8\n'
                     f'[memory.model_spec."cnn"]\nblocks = {json.dumps(BLOCKS)}\n',
                     encoding="utf-8")
    section = load_suite(str(suite)).memory
    assert section is not None
    key = next(c.key for c in section.cases() if c.label == "grow:2")
    pytester.makepyfile(_marked(0.001, f", blocks={BLOCKS!r}"))
    result = pytester.runpytest(*INNER)
    result.stdout.fnmatch_lines([
        f"peak_memory: {key} needs * MiB (required_bytes, predict probe) > max_mib=0.001"])


def test_a_bad_spec_field_fails_with_one_line_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(_marked(100, ", blocks='block1'"))
    result = pytester.runpytest(*INNER)
    lines = [line for line in result.stdout.lines if line.startswith("peak_memory:")]
    assert lines == ["peak_memory: model 'cnn': blocks = 'block1'; use a non-empty list of "
                     "strings"]


TWO_INPUTS_LINE = ("model 'twoin_{}:build': its forward takes 2 inputs (x, y); profl "
                   "measures single-input models (forward(x) on one image batch): wrap it in "
                   "a module whose forward takes one tensor")


def test_a_two_input_model_gets_one_line_from_the_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(twoin_marker=TWO_INPUTS, test_two="""
import pytest

@pytest.mark.peak_memory(model="twoin_marker:build", max_mib=100)
def test_step():
    pass
""")
    result = pytester.runpytest(*INNER)
    lines = [line for line in result.stdout.lines if line.startswith("peak_memory:")]
    assert lines == [f"peak_memory: {TWO_INPUTS_LINE.format('marker')}"]


def test_a_two_input_model_gets_the_same_line_from_profl_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "twoin_trace.py").write_text(TWO_INPUTS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["trace", "--model", "twoin_trace:build", "--case", "full", "--batch-size", "2"])
    assert (code, capsys.readouterr().err.strip()) == (
        2, f"profl: error: {TWO_INPUTS_LINE.format('trace')}")
