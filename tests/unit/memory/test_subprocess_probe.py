"""The fresh-process helper of the rss and cuda probes, and the cuda probe's process wiring.

Everything here runs without a GPU: the cuda probe's child program is replaced by a stand-in,
or run on the CPU with stand-in allocator counters, or sent to a device no machine has.
"""

from __future__ import annotations

import subprocess

import pytest
import torch

from profl_core.errors import ConfigError
from profl_core.memory import case_from_text, cuda, measure
from profl_core.memory.subprocess_probe import MAX_LINE_CHARS, run_fresh

_ECHO = "import json, sys; print('noise'); print(json.dumps(json.loads(sys.stdin.read())))"
_FAIL = (
    "import sys; print('Traceback (most recent call last):', file=sys.stderr); "
    "print('  ' + 'x' * 1800, file=sys.stderr); "
    "print('torch.OutOfMemoryError: CUDA out of memory', file=sys.stderr); sys.exit(1)"
)


def test_run_fresh_returns_the_last_stdout_line() -> None:
    answer = run_fresh(_ECHO, {"a": [1, 2]}, what="test", timeout_s=60)
    assert answer == '{"a": [1, 2]}'


def test_a_failing_child_is_one_line_with_its_last_stderr_line() -> None:
    with pytest.raises(ConfigError) as info:
        run_fresh(_FAIL, {}, what="cuda probe: the process measuring cnn/full/bs2", timeout_s=60)
    assert str(info.value) == (
        "cuda probe: the process measuring cnn/full/bs2 failed: "
        "torch.OutOfMemoryError: CUDA out of memory"
    )


def test_a_long_last_stderr_line_is_cut() -> None:
    program = "import sys; print('e' * 5000, file=sys.stderr); sys.exit(3)"
    with pytest.raises(ConfigError) as info:
        run_fresh(program, {}, what="w", timeout_s=60)
    assert len(str(info.value)) == len("w failed: ") + MAX_LINE_CHARS


def test_a_silent_child_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="w printed nothing on stdout"):
        run_fresh("pass", {}, what="w", timeout_s=60)


def test_a_slow_child_times_out_in_one_line() -> None:
    with pytest.raises(ConfigError, match="w took over 1 s; use a smaller case"):
        run_fresh("import time; time.sleep(30)", {}, what="w", timeout_s=1)


def test_cuda_probe_without_cuda_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("a process was started")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(subprocess, "run", no_process)
    with pytest.raises(ConfigError, match=r"^cuda probe needs a CUDA device; use --probe"):
        cuda.measure(case_from_text("cnn", "full", batch_size=2))


# A stand-in child: answers with the case key, device and generator it was sent.
_STUB_CHILD = """
import json, sys
import torch
from profl_core.memory.case import TrainingCase
from profl_core.memory.report import MemoryReport
request = json.loads(sys.stdin.read())
case = TrainingCase.from_params(request["case"])
state = request["generator_state"]
seed = -1
if state is not None:
    gen = torch.Generator()
    gen.set_state(torch.tensor(state, dtype=torch.uint8))
    seed = int(torch.randint(0, 1000, (1,), generator=gen))
print(MemoryReport(probe="cuda", device=request["device"], case_key=case.key,
                   before_step_bytes=seed, tensor_peak_bytes=2048).to_json())
"""


@pytest.fixture
def stub_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "cuda_device", lambda device: torch.device("cuda", 3))
    monkeypatch.setattr(cuda, "_CHILD", _STUB_CHILD)


@pytest.mark.usefixtures("stub_child")
def test_cuda_probe_parses_the_childs_report() -> None:
    case = case_from_text("cnn", "grow:2", batch_size=4, foreach=True)
    report = cuda.measure(case, device="cuda:3")
    assert (report.case_key, report.device) == ("cnn/grow:2/bs4/foreach", "cuda:3")


@pytest.mark.usefixtures("stub_child")
def test_cuda_probe_child_starts_from_the_callers_generator() -> None:
    expected = int(torch.randint(0, 1000, (1,), generator=torch.Generator().manual_seed(7)))
    report = cuda.measure(case_from_text("cnn", "full", batch_size=2),
                          generator=torch.Generator().manual_seed(7))
    assert report.before_step_bytes == expected


@pytest.mark.usefixtures("stub_child")
def test_cuda_probe_advances_the_callers_generator_like_build_step() -> None:
    generator = torch.Generator().manual_seed(7)
    cuda.measure(case_from_text("cnn", "full", batch_size=2), generator=generator)
    reference = torch.Generator().manual_seed(7)
    torch.randint(0, 2**62, (1,), generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_cuda_probe_child_failure_names_the_case(monkeypatch: pytest.MonkeyPatch) -> None:
    # cuda:99 exists nowhere: the real child fails on a CPU-only build and on a GPU machine.
    monkeypatch.setattr(cuda, "cuda_device", lambda device: torch.device("cuda", 99))
    with pytest.raises(ConfigError) as info:
        cuda.measure(case_from_text("cnn", "full", batch_size=2))
    message = str(info.value)
    assert message.startswith("cuda probe: the process measuring cnn/full/bs2 failed: ")
    assert "\n" not in message



# The real child program on the CPU, with the allocator counters replaced by stand-ins.
_FAKE_COUNTERS = """
import torch
_ticks = [0]
def _allocated_peak(*args, **kwargs):
    _ticks[0] += 512
    return 4096 + _ticks[0]
torch.cuda.set_device = lambda *args, **kwargs: None
torch.cuda.synchronize = lambda *args, **kwargs: None
torch.cuda.memory_allocated = lambda *args, **kwargs: 4096
torch.cuda.memory_reserved = lambda *args, **kwargs: 1 << 20
torch.cuda.reset_peak_memory_stats = lambda *args, **kwargs: None
torch.cuda.max_memory_allocated = _allocated_peak
torch.cuda.max_memory_reserved = lambda *args, **kwargs: 1 << 21
torch.cuda.memory_stats = lambda *args, **kwargs: {"requested_bytes.all.peak": 4000}
"""


@pytest.fixture
def cpu_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "cuda_device", lambda device: torch.device("cpu"))
    monkeypatch.setattr(cuda, "_CHILD", _FAKE_COUNTERS + cuda._CHILD)


@pytest.mark.usefixtures("cpu_child")
def test_cuda_child_segments_are_the_dispatch_probes() -> None:
    case = case_from_text("cnn", "shrink:2", batch_size=2)
    allocator = cuda.measure(case, generator=torch.Generator().manual_seed(1))
    tracked = measure(case, probe="dispatch")
    assert [(b.block, b.phase) for b in allocator.blocks] == [
        (b.block, b.phase) for b in tracked.blocks
    ]


@pytest.mark.usefixtures("cpu_child")
def test_cuda_child_reports_allocated_reserved_and_requested() -> None:
    report = cuda.measure(case_from_text("cnn", "grow:2", batch_size=2))
    assert {k: report.extra[k] for k in ("reserved_peak_bytes", "reserved_baseline_bytes",
                                         "requested_peak_bytes")} == {
        "reserved_peak_bytes": 1 << 21, "reserved_baseline_bytes": 1 << 20,
        "requested_peak_bytes": 4000,
    }
    assert (report.extra["allocated_peak_bytes"], report.before_step_bytes) == (
        report.required_bytes, 4096
    )
