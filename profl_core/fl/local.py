"""Local training of one client on its sub-model (DESIGN §3, profl-paper.md §1.5).

The frozen prefix runs under ``torch.no_grad()`` (no activations kept), only the trainable
parameters go to the optimizer (SGD, lr 0.01, momentum 0.9, weight decay 5e-4 by default), and
BN layers of frozen modules run in eval mode unless ``frozen_bn="train"`` (the authors' code
lets them update their running statistics; then their buffers are sent back too).

Frozen-prefix feature cache: when frozen BN is in eval mode (and there is no augmentation, which
this engine never applies), the prefix is a fixed function of the input, so its output for the
whole local set is computed once per round instead of once per epoch. The batches and their
order are the same as without the cache, so the result is identical.

Step options of a task (:class:`~profl_core.fl.types.ClientTask`), alone or combined; the
single-device alternatives to a smaller sub-model:

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.checkpoint import checkpoint

from profl_core.data import ArrayDataset
from profl_core.errors import ConfigError
from profl_core.fl.observer import StepObserver
from profl_core.fl.types import ClientTask, ClientUpdate, SubModel
from profl_core.models.exits import soft_target_loss

FrozenBN = Literal["eval", "train"]
#: :attr:`ClientTask.autocast` names and their torch dtypes.
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}


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


def autocast_context(task: ClientTask, device: torch.device) -> AbstractContextManager[Any]:
    """``torch.autocast`` on ``device``'s type in the task's dtype (nothing without one)."""
    if task.autocast is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[task.autocast])


def _untrack_batch(bn: nn.Module, args: Any, output: Any) -> None:
    tracked = bn.num_batches_tracked
    assert isinstance(tracked, Tensor)
    tracked.sub_(1)  # its forward has just added 1


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Batch norm in train mode without changing its running statistics (the recompute).

    The same kernel runs (so the recompute saves the same tensors) with momentum 0, which
    leaves the running mean and variance as they are, and ``num_batches_tracked`` is put back
    after every call; all in place, nothing is allocated.
    """
    changed = [bn for bn in module.modules()
               if isinstance(bn, _BatchNorm) and bn.training and bn.track_running_stats]
    momenta = [bn.momentum for bn in changed]
    handles = [bn.register_forward_hook(_untrack_batch) for bn in changed
               if bn.num_batches_tracked is not None]
    for bn in changed:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum in zip(changed, momenta, strict=True):
            bn.momentum = momentum
        for handle in handles:
            handle.remove()


def _checkpointed(module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` of ``module`` run under non-reentrant activation checkpointing."""
    stochastic = any(isinstance(m, _DropoutNd) and m.p > 0 for m in module.modules())

    def run(*args: Any) -> Any:
        calls = 0

        def once(*inner: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return forward(*inner)
            with _running_stats_kept(module):  # the recompute in backward
                return forward(*inner)

        return checkpoint(once, *args, use_reentrant=False, preserve_rng_state=stochastic)

    return run


@contextmanager
def _checkpointing(sub: SubModel, task: ClientTask) -> Iterator[None]:
    """Checkpoint every trainable module of the student path while the body runs.

    The module's own ``forward`` is replaced on the instance, so its ``__call__`` (and the
    observer's hooks on it) runs once per forward; the recompute calls the original forward.
    """
    patched = [sub.modules[name] for name in dict.fromkeys(sub.student)
               if is_trainable(name, task.trainable)]
    for module in patched:
        module.forward = _checkpointed(module, module.forward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def micro_batches(x: Tensor, y: Tensor | None, k: int) -> list[tuple[Tensor, Tensor | None]]:
    """``(x, y)`` split into ``min(k, len(x))`` views whose sizes differ by at most one."""
    if k == 1:
        return [(x, y)]
    parts = min(k, x.shape[0])
    xs = x.tensor_split(parts)
    ys: list[Tensor | None] = list(y.tensor_split(parts)) if y is not None else [None] * parts
    return list(zip(xs, ys, strict=True))


@dataclass(eq=False)
class LocalStep:
    """One local training step of a client's task: what :func:`train_client` runs for every
    batch and what the memory probes measure (DESIGN §3: a case *is* a client step).

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
        with _checkpointing(self.sub, self.task) if self.task.checkpoint else nullcontext():
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
            if share is not None:
                loss = loss * share
        del feats, logits, target  # autograd keeps what backward needs; nothing more stays
        obs.before_backward()
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        return loss.detach()


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
