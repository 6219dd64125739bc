"""The guarded file layer (``profl_core.files``) and the issue-12 cases of each reader."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.suites import load_suite
from profl_core.devices import load_fleet, load_profile
from profl_core.errors import ConfigError
from profl_core.files import (
    atomic_write_text,
    check_writable_dir,
    read_jsonl,
    read_toml,
)
from profl_core.fl import load_checkpoint, save_checkpoint
from profl_core.fl.types import ServerState
from profl_core.memory import TrainingCase
from profl_core.models import native_spec
from profl_core.results import read_result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_mode_of_ordinary_files(tmp_path: Path) -> None:
    """0o666 minus the umask, like ``open(..., "w")`` (mkstemp would give 0600)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert _mode(tmp_path / "atomic.txt") == 0o666 & ~_umask()
    assert _mode(tmp_path / "atomic.txt") == _mode(plain)


def test_checkpoints_get_the_mode_of_ordinary_files(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, 1, ServerState(weights={"w": torch.ones(2)}), "fedavg",
                    np.random.default_rng(0))
    assert _mode(path) == 0o666 & ~_umask()


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "result.json"
    path.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_torn_last_line_is_dropped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_text('{"round": 1}\n{"round": 2}\n{"round": 3, "sta')
    read = read_jsonl(path, "rounds file", missing="-", fix="-")
    assert read.records == [{"round": 1}, {"round": 2}]
    assert read.torn is not None
    assert "torn last line 3" in read.torn


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_text('{"round": 1}\n{"rou\n{"round": 3}\n')
    with pytest.raises(ConfigError, match=r"rounds.jsonl: line 2 is not valid JSON"):
        read_jsonl(path, "rounds file", missing="-", fix="-")


def test_a_complete_but_broken_last_line_is_not_taken_for_a_torn_one(tmp_path: Path) -> None:
    """A torn line has no newline; one that has it is damage, not an interrupted write."""
    path = tmp_path / "rounds.jsonl"
    path.write_text('{"round": 1}\n{"rou\n')
    with pytest.raises(ConfigError, match="line 2"):
        read_jsonl(path, "rounds file", missing="-", fix="-")


PROFILE = ('name = "p"\nkind = "phone"\nram_mib = 3000\nusable_fraction = 0.3\n'
           'runtime_overhead_mib = 100\nshared_gpu_memory = false\nsource = "{source}"\n')


def test_non_utf8_toml_is_one_line_naming_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(PROFILE.format(source="caf\xe9").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"p.toml: not UTF-8 text \(byte 0xe9 at offset"):
        load_profile(path)


@pytest.mark.parametrize("read", [lambda p: load_fleet(p, {}), lambda p: load_suite(str(p))],
                         ids=["fleet", "suite"])
def test_non_utf8_fleets_and_suites_are_config_errors(tmp_path: Path, read: Any) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(b'name = "x"\ndescription = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read(path)


def test_a_folder_where_a_file_belongs_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.toml").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        read_toml(tmp_path / "x.toml", "fleet file")


def test_fleet_count_of_1e11_is_refused_before_any_allocation(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text('name = "f"\nkind = "relative"\ncount = 100000000000\nlow_fraction = 0.1\n'
                    'high_fraction = 1.0\nseed = 1\n')
    with pytest.raises(ConfigError, match=r"f.toml: count = 100000000000; use a whole number "
                                          r"of devices from 1 to 1000000"):
        load_fleet(path, {}, reference_peak_bytes=1000)


def test_memory_batch_size_true_is_refused(tmp_path: Path) -> None:
    """TOML's true is not a batch size (it was accepted, then crashed in randn)."""
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n[memory]\nmodels = ["cnn"]\nbatch_size = true\n')
    with pytest.raises(ConfigError, match=r"\[memory\] batch_size = True"):
        load_suite(str(path))


def test_training_case_batch_size_true_is_refused() -> None:
    with pytest.raises(ConfigError, match="case batch_size=True"):
        TrainingCase(model=native_spec("cnn"), kind="full", batch_size=True)


@pytest.mark.parametrize(("text", "match"), [
    ("[]", r"the file must be a object, not list"),
    ('{"schema_version": 1, "suite": "s", "records": [{"key": "k", "metric": "m", '
     '"value": "0.5", "unit": "ratio"}]}', r"records\[0\].value = '0.5'; use a number"),
    ('{"schema_version": 1, "suite": "s", "records": [{"key": "k", "metric": "m", '
     '"value": true, "unit": "ratio"}]}', r"records\[0\].value = True"),
    ('{"schema_version": 1, "suite": "s"}', r"records is missing"),
])
def test_result_files_of_the_wrong_shape_are_one_line(
    tmp_path: Path, text: str, match: str
) -> None:
    path = tmp_path / "result.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        read_result(path)


def test_a_torch_file_without_the_checkpoint_keys_says_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "weights": {}}, path)
    with pytest.raises(ConfigError, match=r"checkpoint.pt: method is missing; start fresh in a "
                                          r"new folder, or put back the last good"):
        load_checkpoint(path)


def test_writable_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_writable_dir(tmp_path / "f" / "run")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_writable_dir_turns_a_failed_probe_into_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A full disk, a read-only file system, no permission (root ignores modes, so the
    failure is injected at the probe's write)."""

    def refuse(fd: int, data: bytes) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", refuse)
    with pytest.raises(ConfigError, match=rf"--out {tmp_path / 'run'}: cannot write in "
                                          rf"{tmp_path} \({os.strerror(code)}\)"):
        check_writable_dir(tmp_path / "run")


def test_writable_dir_creates_nothing(tmp_path: Path) -> None:
    check_writable_dir(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
