"""Local training of one client on its sub-model (DESIGN §3, profl-paper.md §1.5).

The frozen prefix runs under ``torch.no_grad()`` (no activations kept), only the trainable
parameters go to the optimizer (SGD, lr 0.01, momentum 0.9, weight decay 5e-4 by default), and
BN layers of frozen modules run in eval mode unless ``frozen_bn="train"`` (the authors' code
lets them update their running statistics; then their buffers are sent back too).

Frozen-prefix feature cache: when frozen BN is in eval mode (and there is no augmentation, which
this engine never applies), the prefix is a fixed function of the input, so its output for the
whole local set is computed once per round instead of once per epoch. The batches and their
order are the same as without the cache, so the result is identical.
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

from profl_core.data import ArrayDataset
from profl_core.errors import ConfigError
from profl_core.fl.observer import StepObserver
from profl_core.fl.types import ClientTask, ClientUpdate, SubModel
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
    """One local training step of a client's task: what :func:`train_client` runs for every
    batch and what the memory probes measure (DESIGN §3: a case *is* a client step).

    Built by :meth:`build`: every module of the sub-model is moved to the device, frozen or
    made trainable per the task, and only the trainable parameters go to the optimizer. A step
    runs the frozen prefix under ``no_grad`` (unless given its cached output), then the teacher
    path under ``no_grad`` (distillation tasks), then the student, the loss, ``backward``,
    ``optimizer.step()`` and ``zero_grad(set_to_none=True)``, so no gradient outlives its step.

    Attributes:
        sub: the client's sub-model (modules on ``device``).
        task: what to train.
        optimizer: over the trainable parameters only.
        device: where the modules live.
    """

    sub: SubModel
    task: ClientTask
    optimizer: torch.optim.Optimizer
    device: torch.device

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
        return cls(sub=sub, task=task, optimizer=make_optimizer(task, params), device=device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def run(
        self, x: Tensor, y: Tensor | None, *, features: bool = False,
        observer: StepObserver | None = None,
    ) -> Tensor:
        """One step on the batch ``x`` (labels ``y``; None for distillation); the detached loss.

        Args:
            x: the input batch, or the frozen prefix's output for it when ``features``.
            y: class labels of a cross-entropy task.
            features: ``x`` is already the prefix's output (the feature cache).
            observer: told about block boundaries and phases (the memory probes).
        """
        obs = observer if observer is not None else StepObserver()
        sub, task = self.sub, self.task
        with _observed(sub, obs) if observer is not None else nullcontext():
            if features:
                feats = x
            else:
                with torch.no_grad():
                    feats = sub.run(sub.prefix, x)
            target = None
            if task.loss != "ce":
                with torch.no_grad():
                    target = sub.run(sub.teacher, feats)
            logits = sub.output(feats)
        obs.before_loss()
        if target is not None:
            loss = (F.mse_loss(logits, target) if task.loss == "mse"
                    else soft_target_loss(logits, target, temperature=task.temperature))
        else:
            assert y is not None
            loss = (sub.criterion or F.cross_entropy)(logits, y)
        del feats, logits, target  # autograd keeps what backward needs; nothing more stays
        obs.before_backward()
        loss.backward()
        obs.before_optimizer()
        self.optimizer.step()
        obs.before_zero_grad()
        self.optimizer.zero_grad(set_to_none=True)
        obs.after_step()
        return loss.detach()


def prefix_features(
    sub: SubModel, x: Tensor, batch_size: int, device: torch.device, *,
    budget_bytes: int | None = None,
) -> Tensor | None:
    """The frozen prefix applied to all of ``x`` in order, in chunks, under ``no_grad``.

    With ``budget_bytes``, None as soon as it is clear that the whole output (``len(x)`` times
    one sample's output bytes, known after the first chunk) would exceed it.
    """
    chunks: list[Tensor] = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            chunks.append(sub.run(sub.prefix, x[start:start + batch_size].to(device)))
            if budget_bytes is not None and start == 0:
                first = chunks[0]
                if x.shape[0] * (first.numel() // first.shape[0]) * first.element_size() \
                        > budget_bytes:
                    return None
    return torch.cat(chunks)


def feature_cache(
    sub: SubModel, data: ArrayDataset, task: ClientTask, config: LocalConfig,
    device: torch.device,
) -> Tensor | None:
    """The prefix output of the whole local set, or None when it must not be cached.

    Cached only with a fixed prefix (frozen BN in eval mode, no BN updates) and only when it
    fits the device: the measured step (``required_bytes``, which runs the prefix per batch)
    plus the cache must not exceed ``budget_bytes``. Without a budget it is always cached.
    """
    if not (config.feature_cache and config.frozen_bn == "eval" and not task.bn_update
            and sub.prefix):
        return None
    room = None if task.budget_bytes is None else task.budget_bytes - task.required_bytes
    if room is not None and room <= 0:
        return None
    return prefix_features(sub, data.x, task.batch_size, device, budget_bytes=room)


def train_client(
    sub: SubModel,
    data: ArrayDataset,
    task: ClientTask,
    *,
    generator: torch.Generator,
    config: LocalConfig,
) -> ClientUpdate:
    """Train ``sub`` on ``data`` for ``task.local_epochs`` epochs, one :class:`LocalStep` per
    batch.

    Args:
        sub: The client's sub-model, loaded with the server weights (modified in place).
        data: The client's local data.
        task: What to train (trainable modules, optimizer settings, loss).
        generator: Shuffles the data (one permutation per epoch).
        config: Engine-side settings.

    Returns:
        The update: the state of the trainable modules plus the buffers of the frozen ones
        whose batch norm ran in train mode (``frozen_bn="train"`` or ``task.bn_update``),
        ``num_examples = len(data)`` and ``train_loss``.
    """
    if len(data) == 0:
        raise ConfigError(f"client {task.client_id} has no data")
    if task.loss != "ce" and not sub.teacher:
        raise ConfigError(f"{task.submodel}: a {task.loss} task needs a teacher path")
    step = LocalStep.build(sub, task, config)
    device = step.device
    features = feature_cache(sub, data, task, config, device)
    n = len(data)
    losses: list[float] = []
    for _ in range(task.local_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, task.batch_size):
            idx = order[start:start + task.batch_size]
            y = data.y[idx].to(device) if task.loss == "ce" else None
            if features is not None:
                loss = step.run(features[idx.to(device)], y, features=True)
            else:
                loss = step.run(data.x[idx].to(device), y)
            losses.append(float(loss))
    state: dict[str, Tensor] = {}
    for name, module in sub.modules.items():
        if is_trainable(name, task.trainable):
            items = module.state_dict().items()
        elif updates_bn(name, task, config.frozen_bn):
            items = ((k, b) for k, b in module.named_buffers())
        else:
            continue
        for key, value in items:
            state[f"{name}.{key}"] = value.detach().to("cpu").clone()
    return ClientUpdate(
        client_id=task.client_id,
        state=state,
        num_examples=n,
        metrics={"train_loss": sum(losses) / len(losses)},
    )


def evaluate(
    sub: SubModel, data: ArrayDataset, *, batch_size: int = 512, device: str = "cpu"
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``student(prefix(x))`` on ``data``."""
    dev = torch.device(device)
    for module in sub.modules.values():
        module.to(dev).eval()
    correct = 0
    total_loss = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.x[start:start + batch_size].to(dev)
            y = data.y[start:start + batch_size].to(dev)
            logits = sub.output(sub.run(sub.prefix, x))
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
    return correct / len(data), total_loss / len(data)
