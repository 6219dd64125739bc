"""A client's local training over its epochs, and evaluation (DESIGN §3, profl-paper.md §1.5).

:func:`train_client` runs one :class:`~profl_core.fl.local.LocalStep` per batch of the shuffled
local data, ``task.local_epochs`` times, and returns the update the client sends;
:func:`evaluate` scores a sub-model on a test set.

Frozen-prefix feature cache: when frozen BN is in eval mode (and there is no augmentation, which
this engine never applies), the prefix is a fixed function of the input, so its output for the
whole local set is computed once per round instead of once per epoch. The batches and their
order are the same as without the cache, so the result is identical.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from profl_core.data import ArrayDataset
from profl_core.errors import ConfigError
from profl_core.fl.local import LocalConfig, LocalStep, is_trainable, updates_bn
from profl_core.fl.step_options import autocast_context
from profl_core.fl.types import ClientTask, ClientUpdate, SubModel


def prefix_features(
    sub: SubModel, x: Tensor, batch_size: int, device: torch.device, *,
    budget_bytes: int | None = None, autocast: AbstractContextManager[Any] | None = None,
) -> Tensor | None:
    """The frozen prefix applied to all of ``x`` in order, in chunks, under ``no_grad`` (and
    ``autocast``, the step's autocast context, when given).

    With ``budget_bytes``, None as soon as it is clear that the whole output (``len(x)`` times
    one sample's output bytes, known after the first chunk) would exceed it.
    """
    chunks: list[Tensor] = []
    with torch.no_grad(), autocast if autocast is not None else nullcontext():
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
    fits the device: the measured step (``required_bytes``, which runs the prefix per
    micro-batch) plus the cache must not exceed ``budget_bytes``. Without a budget it is always
    cached. It is computed in chunks of the task's largest micro-batch, under its autocast, so
    its features are the step's own and its transients stay within the step's.
    """
    if not (config.feature_cache and config.frozen_bn == "eval" and not task.bn_update
            and sub.prefix):
        return None
    room = None if task.budget_bytes is None else task.budget_bytes - task.required_bytes
    if room is not None and room <= 0:
        return None
    chunk = -(-task.batch_size // task.micro_batches)
    return prefix_features(sub, data.x, chunk, device, budget_bytes=room,
                           autocast=autocast_context(task, device))


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
        task=task,
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
