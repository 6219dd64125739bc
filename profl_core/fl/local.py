"""One local training step of a client on its sub-model (DESIGN §3, profl-paper.md §1.5).

The frozen prefix runs under ``torch.no_grad()`` (no activations kept), only the trainable
parameters go to the optimizer (SGD, lr 0.01, momentum 0.9, weight decay 5e-4 by default), and
BN layers of frozen modules run in eval mode unless ``frozen_bn="train"`` (the authors' code
lets them update their running statistics; then their buffers are sent back too).

:class:`LocalStep` is that step, what :func:`~profl_core.fl.training.train_client` runs for
every batch (the client's epochs, its frozen-prefix feature cache and its update are in
:mod:`profl_core.fl.training`) and what the memory probes measure.

Step options of a task (:class:`~profl_core.fl.types.ClientTask`), alone or combined; the
single-device alternatives to a smaller sub-model (carried out by
:mod:`profl_core.fl.step_options`):

* ``micro_batches=k`` (gradient accumulation): the batch (or its cached features) is split
  with ``torch.tensor_split`` into k micro-batches whose sizes differ by at most one (the
  first ``len % k`` get one sample more; a batch of fewer than k samples gives one micro-batch
  per sample). Each runs the prefix, teacher, student and loss, and backward on its loss times
  its share of the batch (``len(micro) / len(batch)``): every loss here is a mean over samples,
  so the accumulated gradient is the full batch's mean-loss gradient. One ``optimizer.step()``
  follows. Batch norm in train mode normalises each micro-batch with its own statistics and
  updates its running statistics once per micro-batch (what accumulation does in practice).
* ``checkpoint=True`` (activation checkpointing): every *trainable* module of the student path
  runs under ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` at its module
  boundary, keeps only its input and is run again when backward reaches it (the frozen
  prefix and the teacher run under ``no_grad`` and keep nothing anyway; frozen modules on the
  student path, e.g. the copy of ``om<t>`` in a shrinking fit, keep their activations). The
  recompute runs batch norm with momentum 0 and puts ``num_batches_tracked`` back: the same
  kernel on the same batch statistics, so the same output and saved tensors, and the running
  statistics are updated once per forward as without checkpointing (a plain recompute would
  update them twice). The RNG state is stashed for the
  recompute only when the module has a dropout with ``p > 0`` (stashing it costs a generator
  state per call, and no other op of the zoo draws random numbers).
* ``autocast="bfloat16"`` or ``"float16"``: forward and loss run under ``torch.autocast`` on
  the step's device type (the prefix and the teacher too, and the feature cache is computed
  the same way). Parameters, gradients and optimizer state keep their own dtype (fp32
  master weights, as in real mixed precision); the autocast weight casts are re-made in every
  micro-batch. ``float16`` scales the loss with a ``torch.amp.GradScaler`` (its step skips
  the update on non-finite gradients and reads that flag from the device every step).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from profl_core.errors import ConfigError
from profl_core.fl.observer import StepObserver
from profl_core.fl.step_options import autocast_context, checkpointing, micro_batches
from profl_core.fl.types import ClientTask, SubModel
from profl_core.models.exits import soft_target_loss

FrozenBN = Literal["eval", "train"]


@dataclass(frozen=True, kw_only=True)
class LocalConfig:
    """Engine-side settings of local training (the method sets lr, epochs, batch size).

    Attributes:
        frozen_bn: ``"eval"`` keeps BN of frozen modules fixed; ``"train"`` uses batch
            statistics and updates their running stats (the authors' behaviour).
        feature_cache: Compute the frozen prefix once per round (only with ``frozen_bn="eval"``).
        device: Torch device to train on.
    """

    frozen_bn: FrozenBN = "eval"
    feature_cache: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.frozen_bn not in ("eval", "train"):
            raise ConfigError(f"frozen_bn={self.frozen_bn!r}; use 'eval' or 'train'")


def is_trainable(name: str, trainable: Iterable[str]) -> bool:
    """True when module ``name`` is, or lies inside, one of the ``trainable`` module names."""
    return any(name == t or name.startswith(t + ".") for t in trainable)


def updates_bn(name: str, task: ClientTask, frozen_bn: FrozenBN) -> bool:
    """True when frozen module ``name`` runs its batch norm in train mode for ``task``."""
    return frozen_bn == "train" or is_trainable(name, task.bn_update)


def prepare(sub: SubModel, task: ClientTask, frozen_bn: FrozenBN) -> list[nn.Parameter]:
    """Set ``requires_grad`` and train/eval modes; return the trainable parameters."""
    params: list[nn.Parameter] = []
    for name, module in sub.modules.items():
        train = is_trainable(name, task.trainable)
        for p in module.parameters():
            p.requires_grad_(train)
            if train:
                params.append(p)
        module.train(train or updates_bn(name, task, frozen_bn))
    return params


def make_optimizer(task: ClientTask, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The task's optimizer over ``params``: SGD (momentum, weight decay) or Adam (lr)."""
    if task.optimizer == "adam":
        return torch.optim.Adam(params, lr=task.lr, foreach=task.foreach)
    return torch.optim.SGD(params, lr=task.lr, momentum=task.momentum,
                           weight_decay=task.weight_decay, foreach=task.foreach)


def checkpointed_modules(sub: SubModel, task: ClientTask) -> list[nn.Module]:
    """What a ``checkpoint=True`` step checkpoints: each trainable module of the student path."""
    return [sub.modules[name] for name in dict.fromkeys(sub.student)
            if is_trainable(name, task.trainable)]


@contextmanager
def _observed(sub: SubModel, observer: StepObserver) -> Iterator[None]:
    """Tell ``observer`` when each module of ``sub`` starts and ends its forward."""
    handles = []
    for name, module in sub.modules.items():

        def before(module: nn.Module, args: Any, name: str = name) -> None:
            observer.before_block(name)

        def after(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            observer.after_block(name, output)

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(eq=False)
class LocalStep:
    """One local training step of a client's task: what
    :func:`~profl_core.fl.training.train_client` runs for every batch and what the memory
    probes measure (DESIGN §3: a case *is* a client step).

    Built by :meth:`build`: every module of the sub-model is moved to the device, frozen or
    made trainable per the task, and only the trainable parameters go to the optimizer. A step
    runs, per micro-batch (one unless ``task.micro_batches`` > 1), the frozen prefix under
    ``no_grad`` (unless given its cached output), then the teacher path under ``no_grad``
    (distillation tasks), then the student, the loss and ``backward``; then
    ``optimizer.step()`` and ``zero_grad(set_to_none=True)``, so no gradient outlives its
    step. Checkpointing and autocast follow the task (see the module docstring).

    Attributes:
        sub: the client's sub-model (modules on ``device``).
        task: what to train.
        optimizer: over the trainable parameters only.
        device: where the modules live.
        scaler: the loss scaler of a ``float16`` autocast task (None otherwise).
    """

    sub: SubModel
    task: ClientTask
    optimizer: torch.optim.Optimizer
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def build(cls, sub: SubModel, task: ClientTask, config: LocalConfig) -> LocalStep:
        """Move ``sub`` to the device, freeze it per ``task`` and build the optimizer."""
        device = torch.device(config.device)
        for module in sub.modules.values():
            tensors = itertools.chain(module.parameters(), module.buffers())
            if any(t.device != device for t in tensors):  # (fake tensors cannot be moved)
                module.to(device)
        params = prepare(sub, task, config.frozen_bn)
        if not params:
            raise ConfigError(
                f"{task.submodel}: no trainable parameters in {sorted(task.trainable)}")
        scaler = torch.amp.GradScaler(device.type) if task.autocast == "float16" else None
        return cls(sub=sub, task=task, optimizer=make_optimizer(task, params), device=device,
                   scaler=scaler)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def run(
        self, x: Tensor, y: Tensor | None, *, features: bool = False,
        observer: StepObserver | None = None,
    ) -> Tensor:
        """One step on the batch ``x`` (labels ``y``; None for distillation); the detached loss
        (the batch's mean loss, summed over micro-batches).

        Args:
            x: the input batch, or the frozen prefix's output for it when ``features``.
            y: class labels of a cross-entropy task.
            features: ``x`` is already the prefix's output (the feature cache).
            observer: told about block boundaries and phases (the memory probes); with
                micro-batches, the forward, loss and backward callbacks come once per
                micro-batch and the optimizer's once.
        """
        obs = observer if observer is not None else StepObserver()
        parts = micro_batches(x, y, self.task.micro_batches)
        total: Tensor | None = None
        with (checkpointing(checkpointed_modules(self.sub, self.task)) if self.task.checkpoint
              else nullcontext()):
            for xb, yb in parts:
                share = None if len(parts) == 1 else xb.shape[0] / x.shape[0]
                loss = self._forward_backward(xb, yb, features, observer, obs, share)
                total = loss if total is None else total + loss
        obs.before_optimizer()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        obs.before_zero_grad()
        self.optimizer.zero_grad(set_to_none=True)
        obs.after_step()
        assert total is not None
        return total

    def _forward_backward(
        self, x: Tensor, y: Tensor | None, features: bool, observer: StepObserver | None,
        obs: StepObserver, share: float | None,
    ) -> Tensor:
        """Forward, loss (times ``share`` when given) and backward of one micro-batch; the
        detached (scaled) loss."""
        sub, task = self.sub, self.task
        with autocast_context(task, self.device):
            with _observed(sub, obs) if observer is not None else nullcontext():
                if features:
                    feats = x
                else:
                    with torch.no_grad():
                        feats = sub.run(sub.prefix, x)
                first_only = task.loss == "features"  # the stand-in against the block's output
                target = None
                if task.loss != "ce":
                    with torch.no_grad():
                        target = sub.run(sub.teacher[:1] if first_only else sub.teacher, feats)
                logits = sub.run(sub.student[:1], feats) if first_only else sub.output(feats)
            obs.before_loss()
            if target is not None:
                loss = (F.mse_loss(logits, target) if task.loss in ("mse", "features")
                        else soft_target_loss(logits, target, temperature=task.temperature))
            else:
                assert y is not None
                loss = (sub.criterion or F.cross_entropy)(logits, y)
            if share is not None:
                loss = loss * share
        del feats, logits, target  # autograd keeps what backward needs; nothing more stays
        obs.before_backward()
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        return loss.detach()
