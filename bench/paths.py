"""Every file and folder the harness finds by itself, in one module.

Shipped data is package data inside the installed ``bench`` package, so ``pip install .``
(not only an editable install) carries it: the device profiles and fleets
(:data:`DEVICES_DIR`: ``profiles/*.toml``, ``fleets/*.toml`` and their README), the suites
(:data:`SUITES_DIR`) and the speed benchmarks (:data:`SPEED_TESTS`). A user's own folders come
by flag, never from here: ``--devices DIR`` (a folder laid out like :data:`DEVICES_DIR`),
``--fleet PATH``, a suite path, ``--baseline PATH``, ``--out DIR``.

What the harness writes goes under the current folder: run folders in
``./results/runs/<machine>/`` (:data:`RESULTS_DIR`). :data:`CHECKOUT` is the source checkout
the code runs from (an editable install or the repository itself), ``None`` for an installed
package; only a checkout has a committed gate baseline (:data:`CHECKOUT_BASELINE`, the
default of ``profl check --baseline``) and a git commit to stamp on results.
"""

from __future__ import annotations

import os
from pathlib import Path

from profl_core.data import DEBIAN_FASHION_MNIST_DIR
from profl_core.errors import ConfigError

#: The ``bench`` package folder (in site-packages when installed, else the checkout's).
PACKAGE_DIR = Path(__file__).resolve().parent
#: The shipped devices folder: ``profiles/<name>.toml``, ``fleets/<name>.toml``, README.md.
DEVICES_DIR = PACKAGE_DIR / "devices"
#: The shipped suites: ``<name>.toml``.
SUITES_DIR = PACKAGE_DIR / "suites"
#: The pytest-benchmark files ``profl speed`` runs.
SPEED_TESTS: tuple[Path, ...] = (PACKAGE_DIR / "test_speed.py", PACKAGE_DIR / "test_speed_fl.py",
                                 PACKAGE_DIR / "test_speed_alternatives.py",
                                 PACKAGE_DIR / "test_speed_plan.py")
#: Where run folders go by default: ``results/runs/...`` of the current folder (relative, so
#: it is resolved where the command runs).
RESULTS_DIR = Path("results")


def source_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source tree holding ``package_dir`` (its parent has the project's
    ``pyproject.toml``), or ``None`` when the package is installed (site-packages)."""
    root = package_dir.parent
    return root if (root / "pyproject.toml").is_file() else None


#: The checkout the code runs from, or ``None`` for an installed package.
CHECKOUT: Path | None = source_checkout()
#: The committed baseline of the CI memory gate (``None`` for an installed package, whose
#: users give ``profl check --baseline PATH``).
CHECKOUT_BASELINE: Path | None = (
    None if CHECKOUT is None else CHECKOUT / "results" / "baselines" / "memory-ci.json"
)


def devices_dir(devices: Path | None = None) -> Path:
    """``devices`` (``--devices DIR``) if given, else the shipped :data:`DEVICES_DIR`."""
    return DEVICES_DIR if devices is None else Path(devices)


def profiles_dir(devices: Path | None = None) -> Path:
    """The ``profiles/`` folder of ``devices`` (default: the shipped one)."""
    return devices_dir(devices) / "profiles"


def fleets_dir(devices: Path | None = None) -> Path:
    """The ``fleets/`` folder of ``devices`` (default: the shipped one)."""
    return devices_dir(devices) / "fleets"


def fleet_names(devices: Path | None = None) -> list[str]:
    """Names of the fleets in the ``fleets/`` folder of ``devices``."""
    folder = fleets_dir(devices)
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def fleet_path(fleet: str, devices: Path | None = None) -> Path:
    """A fleet given as a path (it ends in ``.toml`` or exists) is that file; a name is
    ``<devices>/fleets/<name>.toml`` (default: the shipped fleets).

    Raises:
        ConfigError: A name with no such file, naming the known fleets and the fix.
    """
    path = Path(fleet)
    if path.suffix == ".toml" or path.exists():
        return path
    named = fleets_dir(devices) / f"{fleet}.toml"
    if not named.is_file():
        known = ", ".join(fleet_names(devices)) or "none"
        raise ConfigError(f"fleet {fleet!r}: no {named} (known: {known}); give a fleet name "
                          "or the path of a fleet .toml")
    return named


#: The environment variable naming a data folder (searched after ``--data-dir``).
DATA_DIR_ENV = "PROFL_DATA_DIR"


def data_search_dirs(data_dir: Path | None) -> list[Path]:
    """The folders to search for data, in order.

    ``data_dir`` (``--data-dir``) if given, ``$PROFL_DATA_DIR`` if set, Debian's
    Fashion-MNIST folder, then ``./data``.
    """
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs.append(Path(env))
    dirs.extend([DEBIAN_FASHION_MNIST_DIR, Path("data")])
    return dirs


#: The environment variable of the user's cache root (the XDG convention).
XDG_CACHE_ENV = "XDG_CACHE_HOME"


def report_cache_dir() -> Path:
    """``profl plan``'s report cache (:mod:`bench.report_cache`):
    ``$XDG_CACHE_HOME/profl/reports``, else ``~/.cache/profl/reports``."""
    root = os.environ.get(XDG_CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache") / "profl" / "reports"
