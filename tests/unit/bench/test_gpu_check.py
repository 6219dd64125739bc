"""``profl gpu-check``'s CPU side: arguments, the no-CUDA exit, the checks on stand-in reports,
the table and the JSON file. Measuring on a GPU is tested in tests/gpu/test_gpu_check_on_cuda.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu_check
from bench.cli import build_parser, main
from bench.gpu_check import default_cases, parse_case_spec
from bench.gpu_check_output import (
    build_payload,
    exit_code,
    render_table,
    summary_line,
    table_rows,
    write_json,
)
from bench.gpu_check_probes import Probes, Tolerances, check_case, evaluate, run_checks
from profl_core.memory import BlockPeak, MemoryReport, TrainingCase, case_from_text, measure

MIB = 1 << 20


def _report(peak: int, baseline: int, blocks: dict[str, int], *, probe: str = "dispatch",
            **extra: int) -> MemoryReport:
    segments = tuple(
        BlockPeak(block=name.split("/")[0], phase=name.split("/")[1],
                  tensor_peak_bytes=n)  # type: ignore[arg-type]
        for name, n in blocks.items()
    )
    return MemoryReport(probe=probe, device="cuda:0", case_key="cnn/full/bs64",
                        before_step_bytes=baseline, tensor_peak_bytes=peak, blocks=segments,
                        extra=extra)


BLOCKS = {"block1/forward": 60 * MIB, "block1/backward": 100 * MIB}
DISPATCH = _report(100 * MIB, 40 * MIB, BLOCKS)
# the allocator holds 8 MiB more before the step (the cuBLAS workspace) and 0.5 MiB at the peak
CUDA = _report(108 * MIB + MIB // 2, 48 * MIB,
               {"block1/forward": 68 * MIB, "block1/backward": 108 * MIB + MIB // 2},
               probe="cuda", reserved_peak_bytes=128 * MIB, reserved_baseline_bytes=64 * MIB,
               allocated_peak_bytes=108 * MIB + MIB // 2, requested_peak_bytes=107 * MIB)
PREDICT = _report(99 * MIB, 40 * MIB, BLOCKS, probe="predict")


def _checks(result: dict[str, Any]) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in result["checks"]}


# --- arguments and exit codes -------------------------------------------------------------


def test_defaults() -> None:
    args = build_parser().parse_args(["gpu-check"])
    assert (args.batch_size, args.out, args.device, args.case) == (
        64, Path("results/runs/gpu-check.json"), "cuda", None
    )


def test_default_tolerances() -> None:
    args = build_parser().parse_args(["gpu-check"])
    assert (args.tolerance, args.block_tolerance, args.predict_tolerance) == (0.01, 0.02, 0.01)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--case", "resnet18"], "profl: error: --case 'resnet18': write MODEL:CASE, "
                                 "e.g. resnet18:grow:2"),
        (["--case", "resnet18:grow:9"], "profl: error: --case 'resnet18:grow:9': case "
                                        "grow: step=9; use grow:T with T in 1..4"),
        (["--device", "cpu"], "profl: error: --device 'cpu': the GPU check runs on cuda "
                              "or cuda:N"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gpu-check", *argv]) == 2
    assert capsys.readouterr().err == message + "\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "profl gpu-check: error: argument --batch-size: 0; use 1 or more"),
        (["--tolerance", "2"], "profl gpu-check: error: argument --tolerance: 2 is not a "
                               "fraction in (0, 1); write e.g. 0.01"),
        (["--budget-s", "-1"], "profl gpu-check: error: argument --budget-s: -1; use more than 0"),
        (["--wat"], "profl: error: unrecognized arguments: --wat"),
    ],
)
def test_arguments_argparse_refuses_exit_2_after_the_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["gpu-check", *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: profl")
    assert err.splitlines()[-1] == message


def test_out_folder_is_a_bad_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gpu-check", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("profl: error: --out ")


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.usefixtures("no_cuda")
def test_no_cuda_exits_2(tmp_path: Path) -> None:
    assert main(["gpu-check", "--out", str(tmp_path / "out.json")]) == 2


@pytest.mark.usefixtures("no_cuda")
def test_no_cuda_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["gpu-check", "--out", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("gpu-check: no CUDA device (torch ")
    assert err.endswith("; nothing checked; run it on a machine with a GPU\n")


@pytest.mark.usefixtures("no_cuda")
def test_no_cuda_writes_nothing(tmp_path: Path) -> None:
    main(["gpu-check", "--out", str(tmp_path / "out.json")])
    assert list(tmp_path.iterdir()) == []


def test_default_cases() -> None:
    keys = [c.key for c in default_cases(64)]
    assert keys[:6] == ["cnn/full/bs64", "cnn/grow:1/bs64", "cnn/grow:2/bs64",
                        "cnn/grow:3/bs64", "cnn/grow:4/bs64", "cnn/shrink:2/bs64"]
    assert (len(keys), keys[-1]) == (19, "vgg16/grow:5/bs64")


def test_case_spec() -> None:
    case = parse_case_spec("resnet34:shrink:3", batch_size=8)
    assert case == case_from_text("resnet34", "shrink:3", batch_size=8)


# --- the checks ------------------------------------------------------------------------------


def test_untracked_bytes_before_the_step_are_taken_off() -> None:
    numbers = evaluate(DISPATCH, CUDA, PREDICT, Tolerances())["numbers"]
    assert numbers["untracked_before_bytes"] == 8 * MIB
    assert numbers["alloc_vs_dispatch"] == pytest.approx(0.005)


def test_within_tolerance_every_check_passes() -> None:
    result = evaluate(DISPATCH, CUDA, PREDICT, Tolerances())
    assert _checks(result) == {"alloc_vs_dispatch": True, "blocks": True,
                               "reserved_covers_allocated": True, "predict_vs_dispatch": True}
    assert result["status"] == "ok"


def test_worst_block_is_named() -> None:
    numbers = evaluate(DISPATCH, CUDA, PREDICT, Tolerances())["numbers"]
    assert numbers["worst_block"] == "block1/backward"
    assert numbers["worst_block_rel"] == pytest.approx(0.005)


def test_outside_tolerance_fails_the_named_checks() -> None:
    tight = Tolerances(allocated=0.001, blocks=0.001, predict=0.001)
    result = evaluate(DISPATCH, CUDA, PREDICT, tight)
    assert [name for name, ok in _checks(result).items() if not ok] == [
        "alloc_vs_dispatch", "blocks", "predict_vs_dispatch"
    ]
    assert result["status"] == "fail"


def test_a_segment_only_one_probe_saw_fails_the_block_check() -> None:
    cuda = replace(CUDA, blocks=CUDA.blocks[:1])
    result = evaluate(DISPATCH, cuda, PREDICT, Tolerances())
    block_check = next(c for c in result["checks"] if c["name"] == "blocks")
    assert (block_check["ok"], block_check["detail"]) == (
        False, "segments differ: block1/backward only in dispatch"
    )


def test_reserved_below_allocated_fails() -> None:
    cuda = replace(CUDA, extra={**CUDA.extra, "reserved_peak_bytes": 100 * MIB})
    assert _checks(evaluate(DISPATCH, cuda, PREDICT, Tolerances()))[
        "reserved_covers_allocated"] is False


def _stand_ins(cuda_extra_bytes: int = 0) -> Probes:
    """Probes on the CPU: the "cuda" report is dispatch's with extra bytes before the step."""

    def dispatch(case: TrainingCase, device: torch.device) -> MemoryReport:
        return measure(replace(case, foreach=True), probe="dispatch", device="cpu")

    def cuda(case: TrainingCase, device: torch.device) -> MemoryReport:
        report = dispatch(case, device)
        shift = cuda_extra_bytes
        return replace(
            report, probe="cuda", before_step_bytes=report.before_step_bytes + shift,
            tensor_peak_bytes=report.tensor_peak_bytes + shift,
            blocks=tuple(replace(b, tensor_peak_bytes=b.tensor_peak_bytes + shift)
                         for b in report.blocks),
            extra={"reserved_peak_bytes": report.tensor_peak_bytes + shift},
        )

    def predict(case: TrainingCase) -> MemoryReport:
        return measure(case, probe="predict")

    return Probes(dispatch=dispatch, cuda=cuda, predict=predict)


def test_checks_of_real_cpu_reports_pass() -> None:
    # predict with foreach is byte-identical to dispatch with foreach on the CPU
    case = case_from_text("cnn", "grow:2", batch_size=4)
    result = check_case(case, device=torch.device("cpu"), tol=Tolerances(),
                                  probes=_stand_ins(cuda_extra_bytes=4 * MIB))
    assert (result["status"], result["numbers"]["alloc_vs_dispatch"],
            result["numbers"]["predict_vs_dispatch"]) == ("ok", 0.0, 0.0)


def test_a_probe_error_is_the_cases_one_line_error() -> None:
    def failing(case: TrainingCase, device: torch.device) -> MemoryReport:
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")

    probes = _stand_ins()._replace(cuda=failing)
    result = check_case(case_from_text("cnn", "full", batch_size=2),
                                  device=torch.device("cpu"), tol=Tolerances(), probes=probes)
    assert (result["status"], result["error"]) == ("error", "Tried to allocate 2.00 GiB")


def test_cases_not_started_within_the_budget_are_skipped() -> None:
    ticks = iter([0.0, 0.0, 500.0])
    cases = [case_from_text("cnn", "grow:4", batch_size=2),
             case_from_text("cnn", "grow:3", batch_size=2)]
    results = run_checks(cases, device=torch.device("cpu"), tol=Tolerances(),
                                   budget_s=100, probes=_stand_ins(), clock=lambda: next(ticks))
    assert [r["status"] for r in results] == ["ok", "skipped"]


# --- table and JSON ---------------------------------------------------------------------------


def _result(status: str, **fields: Any) -> dict[str, Any]:
    evaluated = evaluate(DISPATCH, CUDA, PREDICT, Tolerances())
    return {"case": "cnn/full/bs64", "error": None, "reports": {}, "wall_s": 1.0,
            **evaluated, "status": status, **fields}


def test_table_row_of_a_measured_case() -> None:
    row = table_rows([_result("ok")])[0]
    assert row == ["cnn/full/bs64", "100.0", "108.5", "8.0", "+0.50", "block1/backward",
                   "+0.50", "128.0", "1.18", "99.0", "-1.00", "ok"]


def test_table_status_names_the_failed_checks() -> None:
    failed = _result("fail")
    failed["checks"][0]["ok"] = False
    assert table_rows([failed])[0][-1] == "FAIL: alloc_vs_dispatch"


def test_table_row_of_an_error() -> None:
    row = table_rows([_result("error", error="boom", numbers={}, checks=[])])[0]
    assert row == ["cnn/full/bs64", *["-"] * 10, "ERROR: boom"]


def test_table_has_one_header_line_and_a_row_per_case() -> None:
    lines = render_table([_result("ok"), _result("ok")]).splitlines()
    assert (len(lines), lines[0].split("|")[1].strip()) == (4, "case")


def test_exit_code() -> None:
    assert [exit_code(rs) for rs in (
        [_result("ok"), _result("skipped")], [_result("ok"), _result("fail")],
        [_result("error")],
    )] == [0, 1, 1]


def test_json_file_round_trips(tmp_path: Path) -> None:
    results = [_result("ok"), _result("fail")]
    payload = build_payload(results, device="cuda:0", gpu="H200", batch_size=64,
                                      tol=Tolerances(), budget_s=270, wall_s=12.34)
    out = tmp_path / "runs" / "gpu-check.json"
    write_json(out, payload)
    data = json.loads(out.read_text())
    assert (data["ok"], data["tolerances"], data["cases"][0]["numbers"]["dispatch_peak_bytes"],
            data["wall_s"]) == (False, {"allocated": 0.01, "blocks": 0.02, "predict": 0.01},
                                100 * MIB, 12.3)


def test_summary_line() -> None:
    results = [_result("ok"), _result("fail", case="cnn/grow:2/bs64"), _result("skipped")]
    assert summary_line(results, Path("x.json")) == (
        "gpu-check: 1 of 2 cases outside tolerance or failed: cnn/grow:2/bs64; "
        "1 skipped (time budget); numbers in x.json"
    )


# --- main with a stand-in GPU -----------------------------------------------------------------


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"is_available": lambda: True, "current_device": lambda: 0,
                        "device_count": lambda: 1, "get_device_name": lambda *a: "Fake GPU",
                        "empty_cache": lambda: None}.items():
        monkeypatch.setattr(torch.cuda, name, value)


@pytest.mark.usefixtures("fake_gpu")
def test_main_prints_the_table_and_writes_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "gpu-check.json"
    monkeypatch.setattr(gpu_check, "PROBES", _stand_ins())
    code = main(["gpu-check", "--case", "cnn:grow:3", "--batch-size", "2", "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    data = json.loads(out.read_text())
    assert code == 0
    assert lines[-1] == f"gpu-check: all 1 cases within tolerance; numbers in {out}"
    assert [c["case"] for c in data["cases"]] == ["cnn/grow:3/bs2"]
    assert (data["gpu"], data["device"]) == ("Fake GPU", "cuda:0")


@pytest.mark.usefixtures("fake_gpu")
def test_main_exits_1_when_a_check_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes = _stand_ins()._replace(predict=lambda case: measure(replace(case, foreach=False),
                                                                probe="predict"))
    out = tmp_path / "o.json"
    # at batch 2 the foreach optimizer step sets the peak: a for-loop prediction is too low
    monkeypatch.setattr(gpu_check, "PROBES", probes)
    code = main(["gpu-check", "--case", "cnn:full", "--batch-size", "2", "--out", str(out)])
    checks = json.loads(out.read_text())["cases"][0]["checks"]
    assert code == 1
    assert [c["name"] for c in checks if not c["ok"]] == ["predict_vs_dispatch"]


@pytest.mark.usefixtures("fake_gpu")
def test_main_rejects_a_missing_device_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["gpu-check", "--device", "cuda:3", "--out", str(tmp_path / "o.json")])
    assert code == 2
    assert capsys.readouterr().err == (
        "profl: error: --device 'cuda:3': this machine has 1 CUDA device(s)\n"
    )
