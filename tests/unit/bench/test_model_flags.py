"""Torchvision and user models through the CLI (``--model``, ``--blocks``, input flags) and
suite TOML (``[memory] models`` and ``[memory.model_spec."NAME"]`` tables)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cli import main
from bench.suites import load_suite
from profl_core.errors import ConfigError
from tests.conftest import importable_module

MODULE = "profl_test_cli_models"
SOURCE = '''
from torch import nn


def build(num_classes):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, num_classes)))
'''


@pytest.fixture(scope="module", autouse=True)
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with importable_module(tmp_path_factory.mktemp("user"), MODULE, SOURCE):
        yield


def _trace_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code = main(["trace", *args, "--json"])
    assert code == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_trace_of_a_torchvision_model_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "--model", "torchvision:mobilenet_v3_small", "--case", "grow:2",
                 "--batch-size", "8"])
    assert code == 0
    assert "om2.basic5" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["no_such_pkg.mod:build", "torchvision:alexnet", "pkg.mod:",
                                   "resnet99", f"{MODULE}:missing"])
def test_trace_of_a_bad_model_string_is_one_line_and_exit_2(
    model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["trace", "--model", model, "--batch-size", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert model in err[0]


def test_trace_of_a_user_model_with_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    data = _trace_json(["--model", f"{MODULE}:build", "--blocks", "0-1,2-3,4", "--case",
                        "grow:1", "--batch-size", "2"], capsys)
    assert data["case_key"].startswith(f"{MODULE}:build@b2-")  # its own partition's digest
    assert data["case_key"].endswith("/grow:1/bs2")


def test_trace_blocks_name_the_sub_models_modules(capsys: pytest.CaptureFixture[str]) -> None:
    data = _trace_json(["--model", f"{MODULE}:build", "--blocks", "0-1,2-3,4", "--case",
                        "grow:1", "--batch-size", "2"], capsys)
    assert {b["block"] for b in data["blocks"]} >= {"block1", "om1.basic2", "om1.head"}  # type: ignore[attr-defined,index]


def test_trace_input_flags_set_the_case_input(capsys: pytest.CaptureFixture[str]) -> None:
    data = _trace_json(["--model", "torchvision:resnet18", "--in-channels", "1",
                        "--input-size", "28", "--num-classes", "7", "--batch-size", "2"], capsys)
    assert data["case_key"] == "torchvision:resnet18@k7@in1x28x28/full/bs2"


@pytest.mark.parametrize(("args", "match"), [
    (["--blocks", "0-1,,4"], "--blocks: block group ''"),
    (["--in-channels", "0"], "--in-channels 0"),
    (["--blocks", "0-1,4"], "give at least two blocks and a head"),
])
def test_trace_bad_model_flags_are_one_line_and_exit_2(
    args: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["trace", "--model", f"{MODULE}:build", *args, "--batch-size", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert match in err[0]


def test_memory_blocks_need_one_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["memory", "--model", "cnn", "--model", f"{MODULE}:build", "--blocks",
                 "0-1,2-3,4", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "--blocks applies to one model" in capsys.readouterr().err


def test_models_prints_a_torchvision_partition(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["models", "--model", "torchvision:resnet18"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| torchvision:resnet18 | 3x32x32 | block4" in out


# --- suite TOML -----------------------------------------------------------------------------

SUITE = f"""
[memory]
models = ["cnn", "torchvision:mobilenet_v3_small", "{MODULE}:build"]
batch_size = 8

[memory.model_spec."{MODULE}:build"]
blocks = ["0-1", "2-3", "4"]
input_size = 16
"""


def _suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_suite_memory_models_take_torchvision_and_user_models(tmp_path: Path) -> None:
    section = load_suite(str(_suite(tmp_path, SUITE))).memory
    assert section is not None
    assert section.models == ("cnn", "torchvision:mobilenet_v3_small", f"{MODULE}:build")


def test_suite_model_spec_table_sets_the_blocks(tmp_path: Path) -> None:
    section = load_suite(str(_suite(tmp_path, SUITE))).memory
    assert section is not None
    assert section.spec(f"{MODULE}:build").blocks == ("0-1", "2-3", "4")


def test_suite_model_spec_table_sets_the_input(tmp_path: Path) -> None:
    section = load_suite(str(_suite(tmp_path, SUITE))).memory
    assert section is not None
    assert section.spec(f"{MODULE}:build").input_shape == (3, 16, 16)


def test_suite_models_without_a_table_keep_their_native_spec(tmp_path: Path) -> None:
    section = load_suite(str(_suite(tmp_path, SUITE))).memory
    assert section is not None
    assert section.spec("cnn").input_shape == (1, 28, 28)


@pytest.mark.parametrize(("table", "match"), [
    ('[memory.model_spec."vgg11"]\ninput_size = 16', "'vgg11' is not in \\[memory\\] models"),
    (f'[memory.model_spec."{MODULE}:build"]\ndepth = 3', "unknown key 'depth'"),
    (f'[memory.model_spec."{MODULE}:build"]\nblocks = ["0-", "4"]', "block group '0-'"),
    (f'[memory.model_spec."{MODULE}:build"]\ninput_size = "big"', "input_size = 'big'"),
])
def test_bad_model_spec_tables_are_one_line_errors(tmp_path: Path, table: str,
                                                   match: str) -> None:
    text = SUITE.split("[memory.model_spec")[0] + table + "\n"
    with pytest.raises(ConfigError, match=match) as err:
        load_suite(str(_suite(tmp_path, text)))
    assert "\n" not in str(err.value)


def test_suite_with_a_bad_model_string_is_an_error(tmp_path: Path) -> None:
    text = '[memory]\nmodels = ["torchvision:alexnet"]\n'
    with pytest.raises(ConfigError, match="not a supported torchvision model"):
        load_suite(str(_suite(tmp_path, text)))


def test_default_suite_measures_two_torchvision_mobilenets() -> None:
    section = load_suite("default").memory
    assert section is not None
    assert {"torchvision:mobilenet_v3_small", "torchvision:mobilenet_v2"} <= set(section.models)
