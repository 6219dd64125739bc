"""The built wheel works on its own: installed outside the checkout, ``profl`` runs anywhere.

The module builds the wheel once from a copy of the sources (``pip wheel --no-deps
--no-build-isolation``: the venv's setuptools, nothing downloaded), installs it with
``--no-deps --target`` into a temporary folder and runs that folder's ``profl`` script with
``PYTHONPATH`` set to it, from a temporary working folder outside the checkout: the
dependencies (torch...) are the venv's, the code and its data only the wheel's. Select it with
``pytest -m wheel``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.wheel]

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "bench", "profl_core")
SHIPPED_FLEETS = 5
TRAIN = [
    "train", "--method", "fedavg", "--dataset", "synthetic", "--model", "cnn", "--width", "0.25",
    "--clients", "4", "--per-round", "2", "--rounds", "1", "--local-epochs", "1",
    "--samples-per-client", "16", "--test-samples", "32", "--partition", "iid",
]


@dataclass(frozen=True)
class Installed:
    """The installed wheel: its target folder and a working folder outside the checkout."""

    site: Path
    work: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``profl ARGS`` (the wheel's console script) in the working folder."""
        return self.python_run(str(self.site / "bin" / "profl"), *args)

    def python_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(self.site), "OMP_NUM_THREADS": "1"}
        return subprocess.run(list(args), cwd=self.work, env=env, capture_output=True,
                              text=True, timeout=300, check=False)


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel from a copy of the sources and install it into a fresh folder."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, src / name)
    _pip("wheel", str(src), "--no-deps", "--no-build-isolation", "--quiet", "-w",
         str(root / "dist"))
    (wheel,) = (root / "dist").glob("profl_bench-*.whl")
    _pip("install", "--no-deps", "--quiet", "--target", str(root / "site"), str(wheel))
    work = root / "work"
    work.mkdir()
    return Installed(site=root / "site", work=work)


def _stdout(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_code_comes_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    done = installed.python_run(sys.executable, "-c", "import bench; print(bench.__file__)")
    assert Path(_stdout(done).strip()).is_relative_to(installed.site)


def test_the_installed_package_knows_it_is_no_checkout(installed: Installed) -> None:
    done = installed.python_run(sys.executable, "-c",
                                "from bench.paths import CHECKOUT; print(CHECKOUT)")
    assert _stdout(done).strip() == "None"


def test_devices_lists_the_shipped_profiles_and_fleets(installed: Installed) -> None:
    out = _stdout(installed.run("devices"))
    assert "phone-2gb" in out
    assert "relative-uniform" in out


def test_trace_prints_the_case(installed: Installed) -> None:
    out = installed.run("trace", "--model", "cnn", "--batch-size", "2", "--case", "grow:2")
    assert _stdout(out).startswith("cnn/grow:2/bs2")


def test_memory_writes_participation_of_every_shipped_fleet(installed: Installed) -> None:
    out = installed.work / "memory"
    _stdout(installed.run("memory", "--model", "cnn", "--batch-size", "2", "--out", str(out)))
    records = json.loads((out / "result.json").read_text())["records"]
    fleets = {r["metric"] for r in records if r["metric"].startswith("participation:")}
    assert len(fleets) == SHIPPED_FLEETS


def test_check_without_a_baseline_asks_for_one(installed: Installed) -> None:
    done = installed.run("check")
    assert done.returncode == 2
    assert "give --baseline PATH" in done.stderr


def test_check_writes_then_passes_a_users_suite_and_baseline(installed: Installed) -> None:
    """The gate of a user's repository from the wheel (the committed baseline on the shipped
    suite is CI's own ``profl check``)."""
    suite, baseline = installed.work / "mine.toml", installed.work / "mine.json"
    suite.write_text('name = "mine"\n[memory]\nmodels = ["cnn"]\nbatch_size = 8\n'
                     'probe = "predict"\nalternatives = ["accum:2"]\n', encoding="utf-8")
    _stdout(installed.run("check", "--suite", str(suite), "--baseline", str(baseline),
                          "--update"))
    out = _stdout(installed.run("check", "--suite", str(suite), "--baseline", str(baseline)))
    assert "0 failing" in out


def test_train_writes_a_run_folder_under_results_runs_here(installed: Installed) -> None:
    """The run folder name has no commit (``unknown``): the wheel is not a checkout."""
    _stdout(installed.run(*TRAIN))
    found = list(installed.work.glob("results/runs/*/*_unknown_train-fedavg/result.json"))
    assert len(found) == 1
