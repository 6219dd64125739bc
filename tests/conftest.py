"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

# tests/flower needs flwr, which pins its own Ray: it runs in its own env (tox -e flower),
# never in the main one, which has no flwr.
collect_ignore = [] if importlib.util.find_spec("flwr") else ["flower"]

PROFILE = """\
name = "lab-phone"
kind = "phone"
ram_mib = 1024
usable_fraction = 0.5
runtime_overhead_mib = 100
shared_gpu_memory = false
source = "a test"
"""
FLEET = """\
name = "mine"
kind = "explicit"
[[devices]]
profile = "lab-phone"
count = 4
"""


@pytest.fixture
def user_devices(tmp_path: Path) -> Path:
    """A devices folder of a user: a profile the shipped folder lacks (``lab-phone``) and a
    fleet made of it (``mine``, 4 devices)."""
    root = tmp_path / "devices"
    (root / "profiles").mkdir(parents=True)
    (root / "fleets").mkdir()
    (root / "profiles" / "lab-phone.toml").write_text(PROFILE, encoding="utf-8")
    (root / "fleets" / "mine.toml").write_text(FLEET, encoding="utf-8")
    return root


@contextmanager
def importable_module(folder: Path, name: str, source: str) -> Iterator[None]:
    """A user's module ``name`` with ``source``, written into ``folder`` and importable (on
    ``sys.path``) until the block ends; then it is forgotten."""
    (folder / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield
        sys.modules.pop(name, None)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for the test, restored after: tiny steps are dominated by
    thread hand-offs, the CI machine is shared, and bitwise comparisons with one-thread
    subprocesses need it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run by tests (``profl plan`` keeps reports across runs) write their cache in a
    folder of the test session, never in the user's ``~/.cache``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
