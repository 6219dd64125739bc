"""The example Flower app (examples/flower) runs offline, as docs/flower.md shows it: with
``flwr run`` (a local SuperLink in simulation mode, no dependency installation) and with
``python run_simulation.py``; both run ProFL until it is finished.

The SuperLink that ``flwr run`` starts outlives the command: the test finds the processes
whose command line names its own Flower home folder (a temporary one) and ends them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DONE = "profl-flower-example: profl finished after 10 rounds"
TIMEOUT_S = 400


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_naming(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def flower_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of an offline ``flwr`` with its own home folder and ports; afterwards the
    SuperLink it started (and what that started) is ended."""
    home = tmp_path / "flwr-home"
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_NUM_THREADS": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    })
    yield env
    for pid in processes_naming(str(home)):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while processes_naming(str(home)) and time.monotonic() < deadline:
        time.sleep(0.5)


def test_flwr_run_runs_the_example_offline(flower_env: dict[str, str]) -> None:
    """``flwr run examples/flower --stream`` on 4 simulated nodes: exit 0, ProFL finished."""
    result = subprocess.run(
        ["flwr", "run", "examples/flower", "--stream", "--federation-config", "num-supernodes=4"],
        cwd=REPO, env=flower_env, capture_output=True, text=True, timeout=TIMEOUT_S,
        check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert DONE in output


def test_run_simulation_runs_the_example(flower_env: dict[str, str]) -> None:
    """``python examples/flower/run_simulation.py``: the app in Flower's Python simulation."""
    result = subprocess.run([sys.executable, "examples/flower/run_simulation.py"], cwd=REPO,
                            env=flower_env, capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert DONE in output
