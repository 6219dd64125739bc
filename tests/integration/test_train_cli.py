"""``profl train`` end to end on the built-in synthetic data, and its bad-input exits."""

import json
from pathlib import Path

import pytest
import torch

from bench.cli import main

pytestmark = pytest.mark.integration

TINY = [
    "train", "--method", "profl", "--dataset", "synthetic", "--model", "cnn", "--width", "0.25",
    "--clients", "10", "--per-round", "2", "--rounds", "3", "--local-epochs", "1",
    "--schedule", "fixed", "--partition", "iid", "--checkpoint-every", "2",
]


@pytest.mark.slow
def test_train_writes_rounds_result_curve_and_checkpoint(tmp_path: Path) -> None:
    """Three ProFL rounds write every output file; a second run without --resume is refused."""
    # Execute
    code = main([*TINY, "--out", str(tmp_path)])
    # Assert
    assert code == 0
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["submodel"] for r in rounds] == ["grow:4", "shrink:4", "grow:3"]
    result = json.loads((tmp_path / "result.json").read_text())
    assert {r["metric"] for r in result["records"]} >= {"final_accuracy", "max_required_bytes"}
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(k.startswith(("block", "head")) for k in weights)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["round"] == 3
    assert main([*TINY, "--out", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    "extra",
    [["--rounds", "0"], ["--resume"], ["--partition", "bogus:1"], ["--clients", "1000"]],
)
def test_bad_input_exits_2(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad numbers, --resume without --out, a bad partition, too many clients: exit 2."""
    args = [*TINY, *extra]
    if "--resume" not in extra:
        args += ["--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("profl: error: ")
    assert len(err.strip().splitlines()) == 1
