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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from profl_core.data import ArrayDataset
from profl_core.errors import ConfigError
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


def setup(sub: SubModel, task: ClientTask, config: LocalConfig) -> torch.optim.Optimizer:
    """Move ``sub`` to the device, freeze it per ``task`` and build the SGD optimizer.

    Only the trainable parameters are given to the optimizer.
    """
    for module in sub.modules.values():
        module.to(torch.device(config.device))
    params = prepare(sub, task, config.frozen_bn)
    if not params:
        raise ConfigError(f"{task.submodel}: no trainable parameters in {sorted(task.trainable)}")
    return torch.optim.SGD(
        params, lr=task.lr, momentum=task.momentum, weight_decay=task.weight_decay
    )


def prefix_features(sub: SubModel, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """The frozen prefix applied to all of ``x`` in order, in chunks, under ``no_grad``."""
    chunks = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            chunks.append(sub.run(sub.prefix, x[start:start + batch_size].to(device)))
    return torch.cat(chunks)


def train_client(
    sub: SubModel,
    data: ArrayDataset,
    task: ClientTask,
    *,
    generator: torch.Generator,
    config: LocalConfig,
) -> ClientUpdate:
    """Train ``sub`` on ``data`` for ``task.local_epochs`` epochs.

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
    device = torch.device(config.device)
    optimizer = setup(sub, task, config)
    cached = (
        config.feature_cache and config.frozen_bn == "eval" and not task.bn_update
        and bool(sub.prefix)
    )
    features = prefix_features(sub, data.x, task.batch_size, device) if cached else None
    n = len(data)
    losses: list[float] = []
    for _ in range(task.local_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, task.batch_size):
            idx = order[start:start + task.batch_size]
            if features is not None:
                feats = features[idx.to(device)]
            else:
                with torch.no_grad():
                    feats = sub.run(sub.prefix, data.x[idx].to(device))
            logits = sub.output(feats)
            if task.loss != "ce":
                with torch.no_grad():
                    target = sub.run(sub.teacher, feats)
                loss = (F.mse_loss(logits, target) if task.loss == "mse"
                        else soft_target_loss(logits, target, temperature=task.temperature))
            else:
                loss = (sub.criterion or F.cross_entropy)(logits, data.y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
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
