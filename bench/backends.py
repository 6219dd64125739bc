"""``--backend local|ray [--address HOST:PORT]`` for the commands that train (DESIGN §3).

The Ray connection is made here, in the CLI, never inside ``profl_core``: ``ray.init()`` starts
a local Ray on this machine (all its CPUs, no dashboard); ``--address`` joins an existing cluster
(``ray start --head`` on the head, ``ray start --address=HEAD:6379`` on the workers).
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from profl_core.errors import ConfigError

BACKEND_NAMES: tuple[str, ...] = ("local", "ray")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend`` and ``--address``."""
    parser.add_argument("--backend", choices=BACKEND_NAMES, default="local",
                        help="where clients train: in this process, or on Ray actors")
    parser.add_argument("--address",
                        help="Ray cluster to join (HEAD:6379); default with --backend ray: "
                             "start a local Ray")


#: Seconds to wait for a TCP connection to ``--address`` before giving up.
CONNECT_TIMEOUT_S = 5.0


def probe_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout_s`` when nothing listens at ``--address`` (Ray itself retries
    a dead address for minutes). ``auto`` and ``local`` are Ray's own words and not probed.

    Raises:
        ConfigError: A malformed address or one that refuses or does not answer in time.
    """
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--address {address!r}: use HOST:PORT, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (
            err.strerror or type(err).__name__)
        raise ConfigError(f"--address {address}: cannot connect to Ray ({reason} within "
                          f"{timeout_s:g} s); start it with `ray start --head` or drop "
                          "--address") from None


@contextmanager
def backend_session(args: argparse.Namespace) -> Iterator[None]:
    """Connect to Ray for ``--backend ray`` for the duration of the block, then disconnect."""
    backend = getattr(args, "backend", "local")
    address = getattr(args, "address", None)
    if backend != "ray":
        if address is not None:
            raise ConfigError("--address needs --backend ray")
        yield
        return
    if address is not None:
        probe_address(address)
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError("ray is not installed; pip install 'profl-bench[ray]'") from None
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR")
    except ConnectionError as err:
        raise ConfigError(f"--address {address}: cannot connect to Ray ({err}); "
                          "start it with `ray start --head` or drop --address") from None
    try:
        yield
    finally:
        ray.shutdown()
