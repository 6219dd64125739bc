"""bench/paths.py: shipped data inside the package, user folders by flag, the checkout."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from bench import paths
from bench.cli import main
from bench.commands import check
from profl_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
def test_a_fleet_name_is_the_shipped_fleet_file() -> None:
    assert paths.fleet_path("edge-mix") == paths.DEVICES_DIR / "fleets" / "edge-mix.toml"


def test_a_fleet_name_is_looked_up_in_the_given_devices_folder(user_devices: Path) -> None:
    devices = user_devices
    assert paths.fleet_path("mine", devices) == devices / "fleets" / "mine.toml"


def test_a_fleet_toml_path_is_taken_as_given() -> None:
    assert paths.fleet_path("elsewhere/my-fleet.toml") == Path("elsewhere/my-fleet.toml")


def test_an_unknown_fleet_name_names_the_known_fleets(user_devices: Path) -> None:
    devices = user_devices
    with pytest.raises(ConfigError, match=r"'nope': no .* \(known: mine\)"):
        paths.fleet_path("nope", devices)


def test_an_installed_package_has_no_checkout(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "bench"
    package.mkdir(parents=True)
    assert paths.source_checkout(package) is None


def test_this_checkout_is_the_repository_root() -> None:
    assert paths.CHECKOUT == REPO


def test_the_checkout_baseline_is_the_committed_gate_baseline() -> None:
    assert paths.CHECKOUT_BASELINE == REPO / "results" / "baselines" / "memory-ci.json"


def test_every_shipped_data_file_is_package_data() -> None:
    """Each file under bench/devices and bench/suites matches a package-data glob of
    pyproject.toml, so a wheel carries it."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]["package-data"]["bench"]
    files = [p.relative_to(paths.PACKAGE_DIR).as_posix()
             for folder in (paths.DEVICES_DIR, paths.SUITES_DIR)
             for p in folder.rglob("*") if p.is_file()]
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert missing == []


def test_devices_reads_the_given_devices_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], user_devices: Path) -> None:
    devices = user_devices
    assert main(["devices", "--devices", str(devices)]) == 0
    assert "lab-phone" in capsys.readouterr().out


def test_devices_without_a_profiles_folder_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["devices", "--devices", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_check_outside_a_checkout_asks_for_a_baseline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed profl has no default baseline: exit 2 naming --baseline, before work."""
    monkeypatch.setattr(check, "DEFAULT_BASELINE", None)
    assert main(["check"]) == 2
    assert "give --baseline PATH" in capsys.readouterr().err


def test_train_with_an_unknown_fleet_of_a_devices_folder_fails_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], user_devices: Path) -> None:
    devices = user_devices
    out = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--devices", str(devices), "--fleet", "nope",
            "--out", str(out)]
    assert main(args) == 2
    assert not out.exists()
