"""Where a round's clients run: the :class:`Backend` protocol and the ``local`` backend.

:class:`FederatedData` (the client datasets and the server's test set) and
:data:`ClientResult` live here too, because every backend takes and returns them; the round
loop (:mod:`profl_core.fl.loop`) and the Ray backend (:mod:`profl_core.fl.ray_backend`) both
import this module and neither imports the other at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from profl_core.data import ArrayDataset
from profl_core.fl.client import ClientJob, run_client
from profl_core.fl.local import LocalConfig
from profl_core.fl.method import SubModels
from profl_core.fl.types import ClientDrop, ClientUpdate, ServerState


@dataclass(frozen=True, kw_only=True)
class FederatedData:
    """Client datasets (index = client id = device id) and the server's test set."""

    clients: tuple[ArrayDataset, ...]
    test: ArrayDataset



ClientResult = ClientUpdate | ClientDrop


class Backend(Protocol):
    """Runs a round's client jobs somewhere; one instance serves one run."""

    def start(self, method: SubModels, data: FederatedData, config: LocalConfig) -> None:
        """Prepare workers for a run (place each client's data once)."""
        ...

    def run_round(
        self, method: SubModels, state: ServerState, jobs: Sequence[ClientJob]
    ) -> list[ClientResult]:
        """Run ``jobs`` against ``state``; one result per job, in job order."""
        ...

    def close(self) -> None:
        """Release the workers."""
        ...


class LocalBackend:
    """The ``local`` backend: clients run one after another in this process."""

    def __init__(self) -> None:
        self._data: FederatedData | None = None
        self._config = LocalConfig()

    def start(self, method: SubModels, data: FederatedData, config: LocalConfig) -> None:
        """Keep a reference to the data and the settings."""
        self._data, self._config = data, config

    def run_round(
        self, method: SubModels, state: ServerState, jobs: Sequence[ClientJob]
    ) -> list[ClientResult]:
        """Run the jobs in order with :func:`~profl_core.fl.client.run_client`."""
        if self._data is None:
            raise RuntimeError("LocalBackend.run_round before start")
        data = self._data
        return [run_client(method, state, job, data.clients[job.task.client_id], self._config)
                for job in jobs]

    def close(self) -> None:
        """Nothing to release."""
