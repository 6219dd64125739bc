"""``profl check --suite my.toml --baseline my.json``: a user's own suite and baseline file.

One baseline is made with ``--update`` per module (cnn at batch 4: eight cases); each test
copies it, edits the copy or the suite and runs the gate once. The predict probe is
deterministic, so each distinct memory section is measured once per module and its numbers
reused (``test_check_gate.py`` measures the same section twice for real).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import bench.gate
from bench.cli import main
from bench.gate import Measured, torch_minor
from bench.memory_cases import MemorySection

SUITE = """
name = "my-gate"
[memory]
models = ["cnn"]
batch_size = {batch}
probe = "predict"
"""
CASES = ["cnn/full", "cnn/grow:1", "cnn/grow:2", "cnn/grow:3", "cnn/grow:4", "cnn/shrink:2",
         "cnn/shrink:3", "cnn/shrink:4"]


def _suite(folder: Path, batch: int = 4) -> Path:
    path = folder / "my.toml"
    path.write_text(SUITE.format(batch=batch), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def measure_once() -> Iterator[None]:
    """Each distinct memory section measured by the real gate once in this module."""
    real = bench.gate.current_values
    done: dict[str, Measured] = {}

    def cached(section: MemorySection, scratch: Path) -> Measured:
        key = repr(section)  # every field, hashable or not
        if key not in done:
            done[key] = real(section, scratch)
        return copy.deepcopy(done[key])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.gate, "current_values", cached)
        yield


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, measure_once: None) -> Path:
    """A baseline written by ``profl check --update`` for the suite of :func:`_suite`."""
    folder = tmp_path_factory.mktemp("made")
    baseline = folder / "my.json"
    code = main(["check", "--suite", str(_suite(folder)), "--baseline", str(baseline),
                 "--update"])
    assert code == 0
    return baseline


@pytest.fixture
def gate(made: Path, tmp_path: Path) -> list[str]:
    """The gate's arguments on this test's copies of the suite and the baseline."""
    shutil.copy(made, tmp_path / "my.json")
    return ["check", "--suite", str(_suite(tmp_path)), "--baseline", str(tmp_path / "my.json")]


def _entry(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))["torch"][torch_minor()]


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data["torch"][torch_minor()])
    path.write_text(json.dumps(data), encoding="utf-8")


def test_update_creates_a_baseline_with_every_case(made: Path) -> None:
    assert sorted(_entry(made)["cases"]) == CASES


def test_update_records_the_probe(made: Path) -> None:
    assert _entry(made)["probe"] == "predict"


def test_update_records_the_torch_version(made: Path) -> None:
    assert _entry(made)["torch_version"] == torch.__version__


def test_definition_hash_is_sha256_of_the_canonical_definition(made: Path) -> None:
    """The oracle: the definition written out by hand (fields at their defaults left out)."""
    definition = {"case": {"batch_size": 4, "kind": "full",
                           "model": {"in_channels": 1, "input_size": 28, "name": "cnn"}},
                  "probe": "predict", "threads": 1}
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    assert _entry(made)["definitions"]["cnn/full"] == hashlib.sha256(text.encode()).hexdigest()


def test_unchanged_passes(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(gate) == 0
    assert "0 failing" in capsys.readouterr().out


def test_a_case_grown_by_10_percent_fails(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline's peak of cnn/grow:2 edited down by 10%: today's number is 11% more."""
    def shrink(entry: dict[str, Any]) -> None:
        entry["cases"]["cnn/grow:2"]["peak_bytes"] = int(
            entry["cases"]["cnn/grow:2"]["peak_bytes"] * 0.9)

    _edit(Path(gate[-1]), shrink)
    assert main(gate) == 1
    assert "FAIL: memory regression in cnn/grow:2\n" in capsys.readouterr().out


def test_a_changed_definition_hash_is_not_comparable(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(Path(gate[-1]), lambda entry: entry["definitions"].update({"cnn/grow:2": "0" * 64}))
    assert main(gate) == 0
    assert "WARNING: 1 case not comparable (cnn/grow:2)" in capsys.readouterr().out


def test_a_not_comparable_case_has_its_numbers_left_uncompared(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A changed definition and a number half as large: no regression reported."""
    def change(entry: dict[str, Any]) -> None:
        entry["definitions"]["cnn/grow:2"] = "0" * 64
        entry["cases"]["cnn/grow:2"]["peak_bytes"] //= 2

    _edit(Path(gate[-1]), change)
    assert main(gate) == 0
    assert "regression" not in capsys.readouterr().out


def test_not_comparable_states_the_rule_and_the_refresh_command(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(Path(gate[-1]), lambda entry: entry["definitions"].update({"cnn/full": "0" * 64}))
    main(gate)
    out = capsys.readouterr().out
    assert "(asv's rule)" in out
    assert f"`profl check --suite {gate[2]} --baseline {gate[4]} --update`" in out


@pytest.mark.slow  # measures a second section (about 5 s)
def test_a_changed_batch_size_makes_every_case_not_comparable(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _suite(Path(gate[2]).parent, batch=2)
    assert main(gate) == 0
    assert f"WARNING: {len(CASES)} cases not comparable" in capsys.readouterr().out


def test_a_case_the_baseline_lacks_is_new_and_passes(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def drop(entry: dict[str, Any]) -> None:
        del entry["cases"]["cnn/grow:4"], entry["definitions"]["cnn/grow:4"]

    _edit(Path(gate[-1]), drop)
    assert main(gate) == 0
    assert "note: 1 new case not in the baseline (cnn/grow:4)" in capsys.readouterr().out


def test_a_case_the_run_lacks_is_missing_and_fails(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    def add(entry: dict[str, Any]) -> None:
        entry["cases"]["cnn/grow:9"] = entry["cases"]["cnn/grow:4"]
        entry["definitions"]["cnn/grow:9"] = entry["definitions"]["cnn/grow:4"]

    _edit(Path(gate[-1]), add)
    assert main(gate) == 1
    assert "FAIL: 1 baseline case missing from this run (cnn/grow:9)" in capsys.readouterr().out


def test_update_makes_a_not_comparable_case_comparable_again(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(Path(gate[-1]), lambda entry: entry["definitions"].update({"cnn/grow:2": "0" * 64}))
    assert main([*gate, "--update"]) == 0
    capsys.readouterr()
    main(gate)
    assert "not comparable" not in capsys.readouterr().out


def test_update_keeps_other_torch_versions(gate: list[str]) -> None:
    path = Path(gate[-1])
    data = json.loads(path.read_text(encoding="utf-8"))
    data["torch"]["0.1"] = {"cases": {}, "definitions": {}}
    path.write_text(json.dumps(data), encoding="utf-8")
    assert main([*gate, "--update"]) == 0
    assert json.loads(path.read_text(encoding="utf-8"))["torch"]["0.1"] == {
        "cases": {}, "definitions": {}}


def test_a_missing_baseline_without_update_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["check", "--suite", str(_suite(tmp_path)), "--baseline", str(tmp_path / "no.json")]
    assert main(args) == 2
    assert "--update`" in capsys.readouterr().err


def test_a_missing_baseline_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["check", "--suite", str(_suite(tmp_path)), "--baseline", str(tmp_path / "no.json")])
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("update", [[], ["--update"]], ids=["check", "update"])
def test_a_garbage_baseline_is_exit_2(
    gate: list[str], update: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    Path(gate[-1]).write_bytes(b"\x00{ not json \xff")
    assert main([*gate, *update]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("update", [[], ["--update"]], ids=["check", "update"])
def test_a_garbage_baseline_is_left_untouched(gate: list[str], update: list[str]) -> None:
    garbage = b"\x00{ not json \xff"
    Path(gate[-1]).write_bytes(garbage)
    main([*gate, *update])
    assert Path(gate[-1]).read_bytes() == garbage


def test_a_baseline_without_definitions_is_exit_2(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A baseline of the format before definition hashes: refused, naming the field."""
    _edit(Path(gate[-1]), lambda entry: entry.pop("definitions"))
    assert main(gate) == 2
    assert f"torch.{torch_minor()}.definitions is missing" in capsys.readouterr().err
