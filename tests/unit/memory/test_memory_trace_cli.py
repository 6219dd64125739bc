"""``profl trace`` through the CLI entry point."""

from __future__ import annotations

import json
import re

import pytest
import torch

from bench.cli import main


def test_trace_prints_the_block_table_and_the_peak(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "--model", "cnn", "--batch-size", "4", "--case", "grow:2"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"\| block2 +\| backward", out)
    assert "peak " in out


def test_trace_json_is_a_memory_report(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "--model", "cnn", "--batch-size", "2", "--case", "shrink:3", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert (code, data["case_key"], data["probe"]) == (0, "cnn/shrink:3/bs2", "predict")


@pytest.mark.parametrize(
    "args",
    [["--case", "grow:9"], ["--probe", "bogus"], ["--width", "0"], ["--batch-size", "0"]],
)
def test_trace_bad_input_is_one_error_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["trace", "--model", "resnet18", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert (code, len(err), err[0].startswith("profl: error:")) == (2, 1, True)


def test_trace_json_gives_required_bytes_the_heap_figure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["trace", "--model", "cnn", "--batch-size", "2", "--case", "grow:2", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["required_bytes"] == data["heap_peak_bytes"]
    assert data["heap_peak_bytes"] >= data["tensor_peak_bytes"]


def test_trace_foreach_flag_names_the_case(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "--model", "cnn", "--batch-size", "2", "--case", "grow:2", "--foreach",
                 "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["case_key"] == "cnn/grow:2/bs2/foreach"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_trace_on_cuda_without_a_gpu_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["trace", "--model", "cnn", "--probe", "dispatch", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "no CUDA device" in err
