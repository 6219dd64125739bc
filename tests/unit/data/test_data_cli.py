"""``profl data``: the lookup order and the one-line error for missing data."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.paths import data_search_dirs
from profl_core.data import DEBIAN_FASHION_MNIST_DIR


def test_search_dirs_follow_the_design_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROFL_DATA_DIR", "/from/env")
    assert data_search_dirs(Path("/given")) == [
        Path("/given"),
        Path("/from/env"),
        DEBIAN_FASHION_MNIST_DIR,
        Path("data"),
    ]
    monkeypatch.delenv("PROFL_DATA_DIR")
    assert data_search_dirs(None) == [DEBIAN_FASHION_MNIST_DIR, Path("data")]


def test_show_missing_cifar10_exits_2_with_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PROFL_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # so ./data cannot hold a real copy
    empty = tmp_path / "empty"
    empty.mkdir()

    code = main(["data", "show", "--dataset", "cifar10", "--data-dir", str(empty)])

    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("profl: error: ")
    assert str(empty) in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_partition_prints_one_row_per_client_and_the_skew(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["data", "partition", "--dataset", "synthetic", "--clients", "4"]
    code = main([*argv, "--partition", "shards:1", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("|") and "---" not in line]
    assert len(rows) == 1 + 4  # header + one row per client
    skew = float(out.strip().splitlines()[-1].rsplit(":", 1)[1])
    assert 0.0 <= skew <= 1.0
