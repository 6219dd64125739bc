"""The method contract: what a federated algorithm implements (DESIGN §3).

Flower's strategy split, with the server state passed in and returned explicitly. A method is
two halves:

* the **client half** (:class:`SubModels`) builds what a client trains from the server state:
  ``memory_plan``, ``submodel``, ``eval_submodel``. It is all a worker calls.
* the **server half** (:class:`Method`) is what the round loop runs: ``init_state``,
  ``configure_round``, ``aggregate``, ``is_finished``, ``round_metrics``.

A method object is immutable after construction: everything that changes during a run lives in
the :class:`~profl_core.fl.types.ServerState` (``weights``, ``meta``; both checkpointed) or in
its ``structure``, the per-run template modules that ``init_state`` builds once. So one object
serves the memory table and the run, and a Ray worker receives it once per run.

A new method subclasses :class:`Method`, takes a config that extends :class:`LocalTraining`,
and writes five members: ``init_state``, ``configure_round``, ``aggregate``, ``memory_plan`` and
``submodel``; the base class gives the rest (``docs/methods.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from profl_core.devices import Fleet
from profl_core.errors import ConfigError, build_config
from profl_core.fl.selection import require_trainable, required
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel


@dataclass(frozen=True, kw_only=True)
class LocalTraining:
    """The local-training settings every method config extends (each field defined here once).

    Attributes:
        rounds: Total round budget of the run.
        per_round: Clients per round.
        local_epochs: Local epochs per round.
        batch_size: Local batch size (also the memory table's).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
    """

    #: The method name that prefixes this config's error messages.
    where: ClassVar[str] = "method"

    rounds: int
    per_round: int = 20
    local_epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        for name in ("rounds", "per_round", "local_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{self.where}: {name}={value!r}; use a whole number, 1 or "
                                  "more")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from a mapping; unknown keys are a ConfigError."""
        return build_config(cls, data, f"{cls.where} config")

    def task(self, client_id: int, submodel: str, trainable: frozenset[str],
             required_bytes: int, **options: Any) -> ClientTask:
        """The client task of these settings (the one task template of every method):
        ``options`` sets (or overrides) the other :class:`ClientTask` fields (loss, step
        options, ProFL's distillation lr...)."""
        settings = {"local_epochs": self.local_epochs, "lr": self.lr, "momentum": self.momentum,
                    "weight_decay": self.weight_decay, "batch_size": self.batch_size} | options
        return ClientTask(client_id=client_id, submodel=submodel, trainable=trainable,
                          required_bytes=required_bytes, **settings)


class SubModels(ABC):
    """The client half of a method: what builds a client's sub-model from the server state.

    The memory contract: :meth:`memory_plan` declares every sub-model the method hands out as
    a template :class:`ClientTask`; the memory table measures exactly those tasks' client
    steps (``submodel`` + :class:`~profl_core.fl.local.LocalStep`, the code that trains them),
    and ``configure_round`` selects clients with those numbers.
    """

    @abstractmethod
    def memory_plan(self, state: ServerState) -> Mapping[str, ClientTask]:
        """Sub-model name -> the task a client gets for it (``client_id`` 0,
        ``required_bytes`` 0): every sub-model this method can hand out."""

    @abstractmethod
    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The sub-model a client trains for ``task``, loaded with the server weights."""

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The global sub-model named ``submodel`` (the one a round trained), to evaluate.
        Default: the client sub-model of its memory-plan task."""
        return self.submodel(state, self.memory_plan(state)[submodel])


class Method(SubModels):
    """An FL algorithm's server half (and, inherited, its client half).

    Subclasses set :attr:`name` and :attr:`config` and never change an attribute after
    ``__init__``; a round's bookkeeping goes into the state ``aggregate`` returns.
    """

    #: The registry name (``profl``, ``fedavg``...).
    name: ClassVar[str]
    #: False when clients train whatever their budget says (FedAvg's AllLarge): the round loop
    #: then gives tasks no ``budget_bytes`` and nobody refuses.
    enforces_memory: ClassVar[bool] = True
    #: The method's settings (its own config class, a :class:`LocalTraining`).
    config: LocalTraining

    def __init__(self, config: LocalTraining) -> None:
        self.config = config

    # ----------------------------------------------------------------- what every method writes

    @abstractmethod
    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The initial server state for ``model`` (a BlockedModel): its weights, ``meta``
        (with ``rounds_used`` 0 for the default :meth:`is_finished`) and the per-run
        ``structure`` the client half reads."""

    @abstractmethod
    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """The round's client tasks; ``state`` is not changed."""

    @abstractmethod
    def aggregate(self, rnd: int, state: ServerState,
                  updates: Sequence[ClientUpdate]) -> ServerState:
        """The new state after the round's updates (keep ``state.structure``:
        ``dataclasses.replace(state, weights=..., meta=...)``)."""

    # ----------------------------------------------------------------- defaults

    def is_finished(self, state: ServerState) -> bool:
        """True after ``config.rounds`` rounds (``meta["rounds_used"]``)."""
        return int(state.meta["rounds_used"]) >= self.config.rounds

    def round_metrics(self, state: ServerState) -> Mapping[str, float | str | None]:
        """Method numbers to record for the round just aggregated (e.g. EM); the key
        ``step_end`` goes to the record's own field. Default: none."""
        return {}

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """``(stage, step, submodel)`` that the next (or last) round trains and evaluates.
        Default: ``("full", 0, <the first sub-model of the memory plan>)``."""
        return "full", 0, next(iter(self.memory_plan(state)))

    def fit_fleet(self, state: ServerState, fleet: Fleet,
                  memory_table: MemoryTable) -> ServerState:
        """Check, before any training, that the method can run on ``fleet`` (a one-line
        ConfigError when not), and return ``state`` with whatever the fleet decides for the
        whole run (AllSmall's width). Called once before the first round, and again on
        resume. Default: some device fits the smallest sub-model of the memory plan."""
        if self.enforces_memory:
            name, required = self._smallest(state, memory_table)
            require_trainable(fleet, required, name)
        return state

    def eligible_share(self, state: ServerState, fleet: Fleet,
                       memory_table: MemoryTable) -> float:
        """Share of the fleet that may take part in the next round. Default: the share that
        fits the smallest sub-model of the memory plan (each device trains the largest it
        fits)."""
        return fleet.participation(self._smallest(state, memory_table)[1])

    def model_weights(self, state: ServerState) -> dict[str, Tensor]:
        """The trained model's own weights, keyed like the model's state dict."""
        return dict(state.weights)

    def _smallest(self, state: ServerState, memory_table: MemoryTable) -> tuple[str, int]:
        needs = {name: required(memory_table, name) for name in self.memory_plan(state)}
        name = min(needs, key=needs.__getitem__)
        return name, needs[name]
