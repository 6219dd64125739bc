"""Building a case's step: the client step of the kind's method, with a synthetic batch.

:func:`method_step` asks the method for its declared memory plan
(:meth:`~profl_core.fl.types.Method.memory_plan`, one template
:class:`~profl_core.fl.types.ClientTask` per sub-model it hands out), builds that sub-model with
the method's own ``submodel()`` and wraps it in the :class:`~profl_core.fl.local.LocalStep`
that :func:`~profl_core.fl.training.train_client` runs for every batch: the same modules (copies
included), the same frozen set, the same optimizer and the same order of work. Memory is always
measured on the *second* step, after a warm-up step has created the optimizer state.

Blocks (the names the probes attribute memory to) are the sub-model's module names, as in the
server's state dict: ``block2``, ``om2.basic3``, ``om2.head``, ``exit1``, ``head``. Inputs are
synthetic random tensors of the case's shape: memory does not depend on their values. The
feature cache of :func:`~profl_core.fl.training.train_client` is not part of a case: it is only
used when the measured step plus the cache fit the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from profl_core.errors import ConfigError
from profl_core.fl.local import LocalConfig, LocalStep
from profl_core.fl.method import Method
from profl_core.fl.observer import StepObserver
from profl_core.memory.case import DTYPES, TrainingCase
from profl_core.methods.registry import kind_owner
from profl_core.models import BlockedModel, ModelSpec, build_model, on_meta

__all__ = [
    "PreparedStep",
    "build_fake_step",
    "build_step",
    "construct_model",
    "materialize",
    "method_step",
    "prepare_step",
]


@dataclass(eq=False, kw_only=True)
class PreparedStep:
    """A client's local step with its batch, ready to run: what every probe measures.

    Attributes:
        key: what is measured (:attr:`TrainingCase.key`, or ``<method>/<sub-model>/...`` for
            a method's own sub-model).
        step: the client's :class:`~profl_core.fl.local.LocalStep`.
        inputs: the input batch.
        labels: class labels (cross-entropy tasks) or ``None`` (distillation).
    """

    key: str
    step: LocalStep
    inputs: Tensor
    labels: Tensor | None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The client's optimizer (trainable parameters only)."""
        return self.step.optimizer

    @property
    def block_names(self) -> tuple[str, ...]:
        """The sub-model's module names (what probes attribute memory to)."""
        return tuple(self.step.sub.modules)

    def modules(self) -> list[nn.Module]:
        """The modules the client holds."""
        return list(self.step.sub.modules.values())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates."""
        return [p for m in self.modules() for p in m.parameters() if p.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters that stay fixed in this step."""
        return [p for m in self.modules() for p in m.parameters() if not p.requires_grad]

    def run(self, observer: StepObserver | None = None) -> None:
        """One client step on the batch: forward, loss, backward, optimizer step, zero_grad."""
        self.step.run(self.inputs, self.labels, observer=observer)



@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run module construction on a private copy of the CPU RNG seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build new modules in ``dtype`` (``Module.to`` fails on fake parameters)."""
    previous = torch.get_default_dtype()
    try:
        if dtype != previous:
            torch.set_default_dtype(dtype)
        yield
    finally:
        torch.set_default_dtype(previous)


@contextmanager
def _meta_if(fake: bool) -> Iterator[None]:
    """Outside any fake mode on the meta device when ``fake``; else nothing changes."""
    if not fake:
        yield
        return
    with on_meta():
        yield


def materialize(module: nn.Module, device: torch.device) -> None:
    """Replace every parameter and buffer by an empty tensor of the same shape on ``device``.

    Under an active ``FakeTensorMode`` the new tensors are fake (``Module.to``/``to_empty``
    fail on fake tensors). Tied parameters stay tied.
    """
    memo: dict[int, Tensor] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            if id(param) not in memo:
                empty = torch.empty(param.shape, dtype=param.dtype, device=device)
                memo[id(param)] = nn.Parameter(empty, requires_grad=param.requires_grad)
            sub._parameters[name] = memo[id(param)]
        for name, buffer in list(sub._buffers.items()):
            if buffer is None:
                continue
            if id(buffer) not in memo:
                memo[id(buffer)] = torch.empty(buffer.shape, dtype=buffer.dtype, device=device)
            sub._buffers[name] = memo[id(buffer)]


def method_step(
    method: Method,
    model: BlockedModel,
    submodel: str,
    *,
    batch_size: int,
    key: str,
    seed: int = 0,
    frozen_bn: str = "eval",
    device: torch.device | str = "cpu",
    optimizer: str = "sgd",
    foreach: bool | None = None,
    micro_batches: int | None = None,
    checkpoint: bool | None = None,
    autocast: str | None = None,
    fake: bool = False,
) -> PreparedStep:
    """The step a client of ``method`` runs for ``submodel``, with a synthetic batch.

    ``method.init_state(model)`` gives the server state, ``method.memory_plan(state)`` the
    template task of ``submodel`` (its batch size, optimizer and foreach set from the
    arguments, and the step options that are not None), ``method.submodel(state, task)`` the
    client's modules, and
    :meth:`LocalStep.build` moves them to ``device``, freezes them and builds the optimizer,
    exactly as in training. New modules and the batch are drawn from ``seed`` only; the global
    RNG is not touched.

    Args:
        method: a fresh method instance (``init_state`` is called on it).
        model: the global model (on the CPU, or on the meta device with ``fake``).
        submodel: a key of the method's memory plan.
        batch_size: samples per step.
        key: the name the probes report.
        seed: seeds the method's new modules and the batch.
        frozen_bn: the engine's ``frozen_bn`` setting (``"eval"`` or ``"train"``).
        device: where the client trains.
        optimizer: ``sgd`` or ``adam``.
        foreach: see :attr:`ClientTask.foreach`.
        micro_batches: :attr:`ClientTask.micro_batches` (None: the plan's).
        checkpoint: :attr:`ClientTask.checkpoint` (None: the plan's).
        autocast: :attr:`ClientTask.autocast` (None: the plan's).
        fake: ``model`` is on the meta device and a ``FakeTensorMode`` is active: the method's
            state and sub-model are built on the meta device, then the sub-model becomes
            empty fake CPU tensors (the ``predict`` probe; nothing is allocated).
    """
    dtype = next(model.parameters()).dtype
    options: dict[str, Any] = {}
    if micro_batches is not None:
        options["micro_batches"] = micro_batches
    if checkpoint is not None:
        options["checkpoint"] = checkpoint
    if autocast is not None:
        options["autocast"] = autocast
    with _seeded(seed), _default_dtype(dtype), _meta_if(fake):
        state = method.init_state(model, np.random.default_rng(seed))
        plan = method.memory_plan(state)
        if submodel not in plan:
            raise ConfigError(f"{method.name} hands out no sub-model {submodel!r}; "
                              f"its memory plan has {', '.join(plan)}")
        task = replace(plan[submodel], batch_size=batch_size, optimizer=optimizer,  # type: ignore[arg-type]
                       foreach=foreach, **options)
        sub = method.submodel(state, task)
    target = torch.device(device)
    if fake:
        for module in sub.modules.values():
            materialize(module, target)
    step = LocalStep.build(sub, task, LocalConfig(frozen_bn=frozen_bn, device=str(target)))  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed + 1)
    spec: ModelSpec = model.spec
    inputs = torch.randn((batch_size, *spec.input_shape), generator=gen, dtype=dtype)
    labels = torch.randint(0, spec.num_classes, (batch_size,), generator=gen)
    if target.type != "cpu":
        inputs, labels = inputs.to(target), labels.to(target)
    return PreparedStep(key=key, step=step, inputs=inputs,
                        labels=labels if task.loss == "ce" else None)


def prepare_step(
    case: TrainingCase, model: BlockedModel, *, seed: int = 0,
    device: torch.device | str = "cpu", fake: bool = False,
) -> PreparedStep:
    """The client step of ``case`` on an already built model (tests may pass a modified one).

    See :func:`method_step`; the method is the default instance of the case kind's owner
    (:func:`~profl_core.methods.registry.kind_owner`), its memory plan's
    task for :attr:`TrainingCase.base_label` gets the case's step options.
    """
    return method_step(
        kind_owner(case.kind).default(batch_size=case.batch_size), model, case.base_label,
        batch_size=case.batch_size,
        key=case.key, seed=seed, frozen_bn="eval" if case.frozen_bn_eval else "train",
        device=device, optimizer=case.optimizer, foreach=case.foreach,
        micro_batches=case.micro_batches, checkpoint=case.checkpoint, autocast=case.autocast,
        fake=fake,
    )


def construct_model(case: TrainingCase, *, seed: int = 0) -> BlockedModel:
    """Build the case's model in its dtype from ``seed``, on the current default device.

    The global RNG is not touched.
    """
    with _default_dtype(DTYPES[case.dtype]), _seeded(seed):
        return build_model(case.model)


def build_step(
    case: TrainingCase,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> PreparedStep:
    """Build the model of ``case`` and the client step on ``device``.

    The model and the method's state are built on the CPU; :meth:`LocalStep.build` moves every
    module of the client's sub-model to ``device`` (output modules included).

    Args:
        case: what to train.
        device: where the sub-model, optimizer state and batch live.
        generator: seeds the initial weights, new modules and batch; ``None`` uses seed 0.
    """
    seed = 0 if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
    return prepare_step(case, construct_model(case, seed=seed), seed=seed, device=device)


def build_fake_step(case: TrainingCase) -> PreparedStep:
    """The step of ``case`` on fake CPU tensors; call it inside an active ``FakeTensorMode``.

    The model, the method's state and the client's sub-model are built on the ``meta`` device
    (no weights, no initialisation maths), then the sub-model's parameters and buffers are
    replaced by empty fake tensors on the CPU (:func:`materialize`).
    Nothing is allocated.

    Raises:
        ConfigError: for ``amp:fp16``, whose GradScaler reads a value from the device every
            step (fake tensors have none).
    """
    if case.autocast == "float16":
        raise ConfigError(f"case {case.label}: predict cannot run amp:fp16 (its GradScaler "
                          "reads the non-finite flag every step); use the dispatch, heap or "
                          "cuda probe, or amp (bfloat16)")
    with on_meta():
        model = construct_model(case)
    return prepare_step(case, model, fake=True)
