"""The federated engine's data types (DESIGN §3); the method contract is
:mod:`profl_core.fl.method`.

Names used everywhere: a *module name* is a state-dict prefix of the server's weights
(``block2``, ``head``, ``om1.basic3``); a state dict key is ``<module name>.<param>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from profl_core.errors import ConfigError

#: Memory table as the engine sees it: sub-model name ("full", "grow:2", "shrink:3") -> bytes.
MemoryTable = Mapping[str, int]

LossKind = Literal["ce", "mse", "kd", "features"]


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """How a client runs its step while training the same model: the step options, declared
    once here for client tasks, alternatives' rungs and memory cases.

    Attributes:
        micro_batches: Gradient accumulation: each batch is split into this many
            micro-batches (``torch.tensor_split``: when it does not divide the batch the first
            ``len % k`` micro-batches get one sample more; a batch smaller than k gives
            ``len`` micro-batches of one), each runs forward and backward with its loss
            scaled by its share of the batch, then one ``optimizer.step()``: the accumulated
            gradient is the full batch's mean-loss gradient (exactly so without batch norm;
            BN normalises each micro-batch with its own statistics and updates its running
            statistics once per micro-batch).
        checkpoint: Activation checkpointing: every trainable module of the student path
            runs under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` and is run
            again in backward; its BN running statistics are updated once (in the forward),
            not again in the recompute.
        autocast: ``None`` (off), ``"bfloat16"`` or ``"float16"``: ``torch.autocast`` on the
            step's device around forward and loss. Parameters, gradients and optimizer state
            stay in their own dtype (fp32 master weights); ``"float16"`` adds a GradScaler.
    """

    micro_batches: int = 1
    checkpoint: bool = False
    autocast: Literal["bfloat16", "float16"] | None = None

    def __post_init__(self) -> None:
        where = self._where()
        if isinstance(self.micro_batches, bool) or not isinstance(self.micro_batches, int) \
                or self.micro_batches < 1:
            raise ConfigError(f"{where}micro_batches={self.micro_batches!r}; use a whole "
                              "number, 1 or more")
        if not isinstance(self.checkpoint, bool):
            raise ConfigError(f"{where}checkpoint={self.checkpoint!r}; use true or false")
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ConfigError(f"{where}autocast={self.autocast!r}; use bfloat16, float16 "
                              "or leave it out")

    def _where(self) -> str:
        """The prefix of this object's error messages."""
        return ""


@dataclass(frozen=True, kw_only=True)
class ClientTask(StepOptions):
    """What one client trains in one round.

    Attributes:
        client_id: Index of the client (== device id in the fleet == data partition index).
        submodel: Sub-model name, also the memory-table key ("full", "grow:2", "shrink:3").
        trainable: Module names whose parameters are trained; everything else is frozen.
        required_bytes: Peak training memory of the sub-model, from the memory table.
        local_epochs: Passes over the local data.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Local mini-batch size.
        loss: ``"ce"`` (labels), or match the sub-model's teacher logits: ``"kd"`` (soft
            targets at ``temperature``, :func:`~profl_core.models.exits.soft_target_loss`) or
            ``"mse"`` (the authors' logit MSE); or ``"features"``: the MSE between the first
            module of the student path and that of the teacher path (ProFL's basic layer
            against the block it stands in for; the rest of the student path is not run).
        temperature: Softmax temperature of a ``"kd"`` task.
        bn_update: Frozen module names whose batch-norm statistics still update (train mode)
            and are sent back, whatever the engine's ``frozen_bn`` says: blocks that were never
            trained (ProFL's random-init prefix while shrinking), whose default statistics
            (mean 0, variance 1) would otherwise collapse their features.
        budget_bytes: The client device's training budget, filled in by the round loop from
            the fleet; the client refuses the task when ``required_bytes`` exceeds it. None:
            no check (methods that ignore memory on purpose, e.g. FedAvg's AllLarge).
        optimizer: ``"sgd"`` (``momentum``, ``weight_decay``) or ``"adam"`` (``lr`` only).
        foreach: PyTorch's multi-tensor optimizer kernels: None picks the device's default
            (foreach on CUDA, a per-parameter loop on the CPU); True/False forces it. The
            foreach kernels hold temporaries for every parameter at once (more memory).
        steps: Sub-steps trained one after another in the client's local update, each a
            whole task of its own (sub-model, trainable modules, ``required_bytes``), each
            starting from the weights the previous one left (FeDepth's block groups); empty
            (the default): the task is one step. With steps, ``required_bytes`` is the
            largest of theirs and ``submodel`` only names the sequence
            (:func:`~profl_core.fl.client.train_task`).

        Step options (``micro_batches``, ``checkpoint``, ``autocast``): see
        :class:`StepOptions`.
    """

    client_id: int
    submodel: str
    trainable: frozenset[str]
    required_bytes: int
    local_epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    loss: LossKind = "ce"
    temperature: float = 1.0
    bn_update: frozenset[str] = frozenset()
    budget_bytes: int | None = None
    optimizer: Literal["sgd", "adam"] = "sgd"
    foreach: bool | None = None
    steps: tuple[ClientTask, ...] = ()

    def _where(self) -> str:
        return f"client task {self.submodel!r}: "


@dataclass(frozen=True, kw_only=True)
class ClientDrop:
    """A client that returned no update: refused its task, raised, ran out of memory or died.

    Attributes:
        client_id: Index of the client.
        reason: One line, starting with the kind: ``refused:``, ``error:``, ``out of memory:``
            or ``worker died:``.
    """

    client_id: int
    reason: str


class RoundFailedError(RuntimeError):
    """A round kept fewer surviving clients than ``min_survivors`` after its retries.

    ``all_non_finite`` is True when every drop was a non-finite update (then the loop reports
    divergence instead).
    """

    all_non_finite: bool = False


class DivergedError(RuntimeError):
    """Training went non-finite or blew up; the run stops (DESIGN §5: status ``diverged``).

    Attributes:
        round: The round that diverged (its record is not written; the checkpoint holds the
            round before it).
        stage: Method stage of that round.
        step: Method step of that round.
        what: What went wrong, e.g. ``server weight block2.0.weight`` or ``train loss 2.1e+07
            > 100 x the step's first-round loss 0.43``.
    """

    def __init__(self, *, round: int, stage: str, step: int, submodel: str, what: str) -> None:
        self.round, self.stage, self.step, self.submodel, self.what = (
            round, stage, step, submodel, what)
        super().__init__(
            f"diverged at round {round} ({stage} step {step}, {submodel}): {what}")


@dataclass(frozen=True, kw_only=True)
class ClientUpdate:
    """A client's result: name-keyed (possibly partial) weights plus metrics, and the task it
    answers (None for updates made by hand)."""

    client_id: int
    state: Mapping[str, Tensor]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    task: ClientTask | None = None


@dataclass(kw_only=True)
class SubModel:
    """A runnable sub-model: modules by name and the paths through them.

    The forward of the trained path is ``student(prefix(x))``; with ``teacher`` set, the loss
    target is ``teacher(prefix(x))``. Each path is a sequence of module names applied in order.

    Attributes:
        modules: Module name -> module (loaded with the server weights).
        prefix: Frozen feature extractor, run under ``torch.no_grad()`` (cacheable).
        student: The path that produces the logits and receives gradients.
        teacher: The distillation target path (frozen, ``no_grad``); empty for CE.
        trainable: Module names whose parameters are trained.
        forward: Optional student forward replacing the ``student`` path, for sub-models that
            branch (DepthFL's exits); the student names still list the modules it uses.
        criterion: Optional ``(output, labels) -> loss`` replacing cross-entropy for ``"ce"``
            tasks (HeteroFL's masked classifier, DepthFL's self-distillation).
    """

    modules: dict[str, nn.Module]
    prefix: tuple[str, ...]
    student: tuple[str, ...]
    teacher: tuple[str, ...] = ()
    trainable: frozenset[str] = frozenset()
    forward: Callable[[Tensor], Tensor] | None = None
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None

    def output(self, features: Tensor) -> Tensor:
        """The student's output for prefix features: ``forward`` if set, else the student path."""
        return self.run(self.student, features) if self.forward is None else self.forward(features)

    def run(self, path: Sequence[str], x: Tensor) -> Tensor:
        """Apply the modules of ``path`` to ``x`` in order."""
        for name in path:
            x = self.modules[name](x)
        return x

    def state(self, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Name-keyed state (params and buffers) of ``names`` (default: all modules)."""
        out: dict[str, Tensor] = {}
        for name in self.modules if names is None else names:
            for key, value in self.modules[name].state_dict().items():
                out[f"{name}.{key}"] = value
        return out


@dataclass(kw_only=True)
class ServerState:
    """The server's state: global weights, the method's bookkeeping and its run structure.

    ``weights`` and ``meta`` are checkpointed; ``meta`` holds only what
    ``torch.load(weights_only=True)`` can read back: numbers, strings, bools, None, lists,
    dicts and tensors. ``structure`` is what the method's ``init_state`` builds once per run
    from the model (template modules, the step list) and never changes; it is not
    checkpointed (a resumed run builds it again). Methods derive a new state with
    ``dataclasses.replace(state, weights=..., meta=...)``, which keeps it.
    """

    weights: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    structure: Any = None


@dataclass(frozen=True, kw_only=True)
class RoundRecord:
    """One line of ``rounds.jsonl``.

    Attributes:
        round: 1-based round number.
        stage: Method stage ("shrink", "grow", "full").
        step: ProFL step t (0 when the method has no steps).
        submodel: Sub-model name trained this round.
        accuracy: Test accuracy in [0, 1], or None when not evaluated this round.
        loss: Test cross-entropy, or None when not evaluated.
        train_loss: Mean local training loss over the participants.
        participants: Client ids that trained and were aggregated.
        eligible_share: Share of the fleet whose budget fits the round's sub-model.
        required_bytes: Per participant, the bytes its task needs (same order).
        wall_s: Seconds this round took (training + aggregation + evaluation).
        metrics: Method-specific numbers (e.g. ``em``).
        dropped: ``(client id, reason)`` of every selected client that returned no update
            (see :class:`ClientDrop`), retried attempts included (reason prefixed
            ``attempt k:``). Absent in old ``rounds.jsonl`` files: read it as empty.
        step_end: Why this round ended the method's step (ProFL: ``"em"`` when effective
            movement converged, ``"cap"`` at the step's round cap, ``"fixed"`` on the fixed
            schedule), None when the step goes on or the method has no steps.
    """

    round: int
    stage: str
    step: int
    submodel: str
    accuracy: float | None
    loss: float | None
    train_loss: float
    participants: tuple[int, ...]
    eligible_share: float
    required_bytes: tuple[int, ...]
    wall_s: float
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    dropped: tuple[tuple[int, str], ...] = ()
    step_end: str | None = None
