"""One training configuration to measure (DESIGN §3 TrainingCase): a client step of a method.

A :class:`TrainingCase` names a model spec, a *kind* of sub-model and its step, a batch size,
the optimizer and the dtype. A case is not a step built for measuring: it is the step a client
of the kind's method runs. :func:`method_step` asks the method for its declared memory plan
(:meth:`~profl_core.fl.types.Method.memory_plan`, one template
:class:`~profl_core.fl.types.ClientTask` per sub-model it hands out), builds that sub-model with
the method's own ``submodel()`` and wraps it in the :class:`~profl_core.fl.local.LocalStep`
that :func:`~profl_core.fl.local.train_client` runs for every batch: the same modules (copies
included), the same frozen set, the same optimizer and the same order of work. Memory is always
measured on the *second* step, after a warm-up step has created the optimizer state.

Kinds and the method whose clients run them (T = number of blocks, steps are 1-based):

``full``
    FedAvg's client: every block and the head trainable, cross-entropy. Width-scaled models
    are ``full`` cases of a spec with ``ModelSpec.width < 1`` (HeteroFL, FedRolex and AllSmall
    measure their own sub-models through the same path, see ``bench.training.memory_table``).
``grow:t`` (t = 1..T)
    ProFL's step t: blocks 1..t-1 frozen and run under ``no_grad`` (in eval mode when
    ``frozen_bn_eval``), block t and the output module ``om<t>`` (its basic layers and head;
    the real head for t == T) trainable, cross-entropy.
``shrink:t`` (t = T..2)
    The basic-layer fit of ProFL's shrinking step t: the frozen prefix, the teacher (block t
    and ``om<t>``, frozen, ``no_grad``) and the student ``om<t-1>`` (a fresh ``basic<t>``, the
    only trainable module, followed by a frozen *copy* of ``om<t>``: the client holds both),
    soft-target distillation at ProFL's default temperature. The other half of shrinking step
    t, training block t, is ``grow:t``.
``depth:k``
    DepthFL's depth-k client: blocks 1..k each with its exit, mutual self-distillation.
``trunc:k``
    InclusiveFL's depth-k client: blocks 1..k and the exit after block k, cross-entropy.

Modifiers (the single-device alternatives, :class:`~profl_core.fl.types.ClientTask`'s step
options; :mod:`profl_core.fl.local` says what each does) follow the base, joined by ``+``, and
combine with each other and with every base: ``accum:k`` (k >= 2 micro-batches of batch/k,
gradient accumulation; k must divide the batch size), ``ckpt`` (activation checkpointing of
every trainable module of the student path), ``amp`` (bfloat16 autocast, fp32 master weights;
``amp:bf16`` is the same) and ``amp:fp16`` (float16 autocast with a GradScaler; its skip check
reads a value every step, so ``predict`` cannot run it: measure it with ``dispatch``, ``heap``
or ``cuda``). The dtype is explicit so a case means the same step on every device. A text
that starts with a modifier has the base ``full`` (``accum:4`` is ``full+accum:4``); labels
and keys write the modifiers in one order, ``ckpt``, ``amp``, ``accum:k``
(``grow:2+ckpt+accum:4``), so ``accum:4+ckpt`` and ``ckpt+accum:4`` are the same case.

Blocks (the names the probes attribute memory to) are the sub-model's module names, as in the
server's state dict: ``block2``, ``om2.basic3``, ``om2.head``, ``exit1``, ``head``. Inputs are
synthetic random tensors of the case's shape: memory does not depend on their values. The
feature cache of :func:`~profl_core.fl.local.train_client` is not part of a case: it is only
used when the measured step plus the cache fit the device.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from profl_core.errors import ConfigError, field_names, reject_unknown_keys
from profl_core.fl.local import LocalConfig, LocalStep
from profl_core.fl.observer import LOSS_SEGMENT, OPTIMIZER_SEGMENT, SegmentObserver, StepObserver
from profl_core.fl.types import Method
from profl_core.methods.depthfl import DepthFL, DepthFLConfig
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.inclusivefl import InclusiveFL
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import (
    BlockedModel,
    ModelSpec,
    build_model,
    check_model_name,
    fitted_basic_layers,
    native_spec,
)

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

__all__ = [
    "KINDS",
    "LOSS_SEGMENT",
    "OPTIMIZER_SEGMENT",
    "Kind",
    "PreparedStep",
    "SegmentObserver",
    "StepObserver",
    "TrainingCase",
    "all_cases",
    "build_fake_step",
    "build_step",
    "case_from_text",
    "fitted_steps",
    "method_step",
    "modifier_texts",
    "num_blocks",
    "parse_case",
    "parse_case_text",
    "prepare_step",
]


@functools.lru_cache(maxsize=64)
def num_blocks(spec: ModelSpec) -> int:
    """T for a model spec, from a model built on the meta device (nothing is allocated)."""
    with unset_fake_temporarily(), torch.device("meta"):
        return build_model(spec).num_blocks


@functools.lru_cache(maxsize=64)
def fitted_steps(spec: ModelSpec) -> tuple[int, ...]:
    """:func:`~profl_core.models.fitted_basic_layers` of ``spec``, built on the meta device."""
    with unset_fake_temporarily(), torch.device("meta"):
        model = build_model(spec)
        if model.num_blocks < 2:
            return ()
        return fitted_basic_layers(model.output_module(1), model.num_blocks)


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


def _fedavg(case: TrainingCase) -> Method:
    return FedAvg(FedAvgConfig(rounds=1, batch_size=case.batch_size))


def _profl(case: TrainingCase) -> Method:
    return ProFL(ProFLConfig(rounds=1, batch_size=case.batch_size))


def _depthfl(case: TrainingCase) -> Method:
    return DepthFL(DepthFLConfig(rounds=1, batch_size=case.batch_size))


def _inclusivefl(case: TrainingCase) -> Method:
    return InclusiveFL(DepthFLConfig(rounds=1, batch_size=case.batch_size))


@dataclass(frozen=True)
class Kind:
    """A family of sub-models: how its steps are numbered and whose clients train them.

    Attributes:
        name: the case text prefix (``full``, ``grow``, ``shrink``).
        steps: the valid steps for a model with T blocks (empty: the kind takes no step).
        method: the method (default settings, the case's batch size) whose memory plan holds
            the kind's sub-models under the case's label.
    """

    name: str
    steps: Callable[[int], range]
    method: Callable[[TrainingCase], Method]


KINDS: dict[str, Kind] = {
    "full": Kind(name="full", steps=lambda blocks: range(0), method=_fedavg),
    "grow": Kind(name="grow", steps=lambda blocks: range(1, blocks + 1), method=_profl),
    "shrink": Kind(name="shrink", steps=lambda blocks: range(2, blocks + 1), method=_profl),
    "depth": Kind(name="depth", steps=lambda blocks: range(1, blocks + 1), method=_depthfl),
    "trunc": Kind(name="trunc", steps=lambda blocks: range(1, blocks + 1),
                  method=_inclusivefl),
}


ACCUM, CKPT, AMP = "accum", "ckpt", "amp"
#: The modifier names of a case text.
MODIFIERS: tuple[str, ...] = (ACCUM, CKPT, AMP)
#: Autocast dtype (``TrainingCase.autocast``) -> its modifier text.
AUTOCAST: dict[str | None, str] = {None: "", "bfloat16": AMP, "float16": f"{AMP}:fp16"}
_AMP_DTYPES: dict[str | None, str] = {None: "bfloat16", "bf16": "bfloat16", "fp16": "float16"}
_GRAMMAR = "write BASE[+MOD...] with MOD accum:k, ckpt, amp, amp:bf16 or amp:fp16"


def modifier_texts(*, micro_batches: int, checkpoint: bool, autocast: str | None
                   ) -> tuple[str, ...]:
    """Step options as modifier texts in canonical order: ``ckpt``, ``amp`` (or
    ``amp:fp16``), ``accum:k`` (empty for the plain step)."""
    out: list[str] = []
    if checkpoint:
        out.append(CKPT)
    if autocast is not None:
        out.append(AUTOCAST[autocast])
    if micro_batches > 1:
        out.append(f"{ACCUM}:{micro_batches}")
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class TrainingCase:
    """One training configuration to measure or run.

    Attributes:
        model: the model spec (width multiplier included).
        kind: a key of :data:`KINDS` (``full``, ``grow``, ``shrink``, ``depth``, ``trunc``).
        step: 1-based step (or depth) for every kind but ``full``; ``None`` for ``full``.
        batch_size: samples per step.
        optimizer: ``sgd`` (momentum 0.9, weight decay 5e-4) or ``adam``.
        dtype: parameter and input dtype name (``float32``, ``bfloat16``, ...).
        frozen_bn_eval: put frozen blocks in eval mode (batch-norm statistics stay fixed).
        foreach: the optimizer's multi-tensor kernels (:attr:`ClientTask.foreach`): None is
            the device's default (foreach on CUDA, a per-parameter loop on the CPU); True
            models a CUDA step's optimizer with ``predict``.
        micro_batches: gradient accumulation over this many micro-batches of
            ``batch_size / micro_batches`` (``accum:k``; must divide ``batch_size``).
        checkpoint: activation checkpointing of the student's trainable modules (``ckpt``).
        autocast: ``None``, ``"bfloat16"`` (``amp``) or ``"float16"`` (``amp:fp16``).
    """

    model: ModelSpec
    kind: str
    step: int | None = None
    batch_size: int
    optimizer: str = "sgd"
    dtype: str = "float32"
    frozen_bn_eval: bool = True
    foreach: bool | None = None
    micro_batches: int = 1
    checkpoint: bool = False
    autocast: str | None = None

    def __post_init__(self) -> None:
        check_model_name(self.model.name)
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ConfigError(f"case kind={self.kind!r}; use one of {', '.join(KINDS)}")
        if self.step is not None and (isinstance(self.step, bool)
                                      or not isinstance(self.step, int)):
            raise ConfigError(f"case step={self.step!r}; use a whole number")  # bool is not int
        check_step(self.kind, self.step, num_blocks(self.model))
        if self.kind == "shrink" and self.step not in fitted_steps(self.model):
            raise ConfigError(f"case shrink:{self.step}: block {self.step}'s stand-in is the "
                              "identity (identity_standins), so ProFL fits nothing there; "
                              "drop the case")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ConfigError(f"case batch_size={self.batch_size!r}; use a whole number")
        if self.batch_size < 1:
            raise ConfigError(f"case batch_size={self.batch_size}; use 1 or more")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"case optimizer={self.optimizer!r}; use one of {OPTIMIZERS}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"case dtype={self.dtype!r}; use one of {', '.join(DTYPES)}")
        if self.foreach not in (None, True, False):
            raise ConfigError(f"case foreach={self.foreach!r}; use true, false or leave it out")
        k = self.micro_batches
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"case micro_batches={k!r}; use a whole number, 1 or more")
        if self.batch_size % k:
            divisors = [d for d in range(2, self.batch_size + 1) if self.batch_size % d == 0]
            fix = (f"use a k that divides it ({', '.join(map(str, divisors[:6]))}"
                   f"{', ...' if len(divisors) > 6 else ''})" if divisors
                   else "a batch of 1 has no micro-batches; drop accum")
            raise ConfigError(f"case {self.base_label}+accum:{k}: {k} does not divide the batch "
                              f"size {self.batch_size}; {fix}")
        if not isinstance(self.checkpoint, bool):
            raise ConfigError(f"case checkpoint={self.checkpoint!r}; use true or false")
        if self.autocast not in AUTOCAST:
            raise ConfigError(f"case autocast={self.autocast!r}; use bfloat16, float16 or "
                              "leave it out")

    @property
    def base_label(self) -> str:
        """The sub-model: ``full``, ``grow:2``, ``shrink:3`` (the method's memory-plan key)."""
        return self.kind if self.step is None else f"{self.kind}:{self.step}"

    @property
    def modifiers(self) -> tuple[str, ...]:
        """The step options as modifier texts in canonical order (:func:`modifier_texts`)."""
        return modifier_texts(micro_batches=self.micro_batches, checkpoint=self.checkpoint,
                              autocast=self.autocast)

    @property
    def label(self) -> str:
        """``full``, ``grow:2``, ``shrink:3``, ``full+ckpt+accum:4``: the base and its
        modifiers in canonical order."""
        return "+".join((self.base_label, *self.modifiers))

    @property
    def key(self) -> str:
        """A stable unique name, e.g. ``resnet18/grow:2/bs64``, ``resnet18@w0.5/full/bs64`` or
        ``resnet18@b5-1a2b3c4d/grow:2/bs64`` (5 blocks of its own partition, the groups' digest).

        Non-default spec fields and options are appended so distinct cases never collide.
        """
        spec, native = self.model, native_spec(self.model.name)
        model = spec.name
        if spec.width != 1.0:
            model += f"@w{spec.width:g}"
        if spec.num_classes != native.num_classes:
            model += f"@k{spec.num_classes}"
        if spec.input_shape != native.input_shape:
            model += "@in" + "x".join(map(str, spec.input_shape))
        if spec.blocks:  # a partition of its own: the groups' digest, short and stable
            digest = hashlib.sha256(",".join(spec.blocks).encode()).hexdigest()[:8]
            model += f"@b{len(spec.blocks) - 1}-{digest}"
        if spec.identity_standins:
            model += "@id"
        parts = [model, self.label, f"bs{self.batch_size}"]
        if self.optimizer != "sgd":
            parts.append(self.optimizer)
        if self.dtype != "float32":
            parts.append(self.dtype)
        if not self.frozen_bn_eval:
            parts.append("bn-train")
        if self.foreach is not None:
            parts.append("foreach" if self.foreach else "for-loop")
        return "/".join(parts)

    def params(self) -> dict[str, Any]:
        """Every field as plain JSON-able values, for hashing and result records."""
        out = asdict(self)
        out["model"] = asdict(self.model)
        return out

    @classmethod
    def from_params(cls, data: Mapping[str, Any]) -> TrainingCase:
        """Inverse of :meth:`params`; raises ConfigError on unknown keys."""
        reject_unknown_keys(data, field_names(cls), "training case")
        values = dict(data)
        if "model" not in values:
            raise ConfigError("training case: missing key 'model'; write it with params()")
        values["model"] = ModelSpec.from_dict(dict(values["model"]), where="training case model")
        return cls(**values)


def check_step(kind: str, step: int | None, blocks: int) -> None:
    """Raise a one-line ConfigError when ``step`` is invalid for ``kind`` and T = ``blocks``."""
    valid = KINDS[kind].steps(blocks)
    if len(valid) == 0:
        if step is not None:
            raise ConfigError(f"case {kind}: step={step}; {kind} takes no step, write {kind!r}")
        return
    if step is None or step not in valid:
        raise ConfigError(
            f"case {kind}: step={step}; use {kind}:T with T in {valid.start}..{valid.stop - 1}"
        )


_CASE_RE = re.compile(r"^([a-z]+)(?::(-?\d+))?$")
_PART_RE = re.compile(r"^([a-z0-9]+)(?::([a-z0-9-]+))?$")


@dataclass(frozen=True)
class CaseText:
    """A parsed case text: the base sub-model and its step options.

    Attributes:
        kind: a key of :data:`KINDS`.
        step: the base's step (None for ``full``).
        micro_batches: from ``accum:k`` (1 without it).
        checkpoint: ``ckpt`` was given.
        autocast: ``"bfloat16"`` (``amp``, ``amp:bf16``), ``"float16"`` (``amp:fp16``) or None.
    """

    kind: str
    step: int | None
    micro_batches: int = 1
    checkpoint: bool = False
    autocast: str | None = None

    def options(self) -> dict[str, Any]:
        """The step options as :class:`TrainingCase` fields."""
        return {"micro_batches": self.micro_batches, "checkpoint": self.checkpoint,
                "autocast": self.autocast}

    @property
    def modifiers(self) -> tuple[str, ...]:
        """The modifiers in canonical order (:func:`modifier_texts`)."""
        return modifier_texts(**self.options())


def parse_case_text(text: str, *, blocks: int | None = None) -> CaseText:
    """Parse ``BASE[+MOD...]`` (``full+accum:4``, ``grow:2+ckpt``, ``accum:8``, ``amp``).

    The base is what :func:`parse_case` reads; a text that starts with a modifier has the base
    ``full``. Modifiers may come in any order, each at most once.

    Args:
        text: the case text.
        blocks: T of the model; when given, the base's step is checked against it.

    Raises:
        ConfigError: one line naming the text and the fix: unknown or duplicate modifiers,
            ``accum`` without a whole k >= 2, an argument ``ckpt`` does not take, an ``amp``
            dtype other than bf16/fp16, two bases.
    """
    parts = [part.strip() for part in text.strip().split("+")]
    first = _PART_RE.match(parts[0])
    bare = first is not None and first.group(1) in MODIFIERS
    if bare:
        parts.insert(0, "full")
    kind, step = parse_case(parts[0], blocks=blocks)
    seen: set[str] = set()
    values: dict[str, Any] = {}
    for part in parts[1:]:
        match = _PART_RE.match(part)
        name = match.group(1) if match is not None else part
        arg = match.group(2) if match is not None else None
        if match is None or name not in MODIFIERS:
            what = (f"the base {part} comes first" if name in KINDS and bare
                    else "a second base; a case has one" if name in KINDS
                    else f"unknown modifier {part!r}")
            raise ConfigError(f"case {text!r}: {what}; {_GRAMMAR}")
        if name in seen:
            raise ConfigError(f"case {text!r}: {name} given twice; give each modifier once")
        seen.add(name)
        if name == ACCUM:
            if arg is None or not arg.isdigit() or int(arg) < 2:
                raise ConfigError(f"case {text!r}: {part!r}; write accum:k with a whole k >= 2 "
                                  "(k micro-batches of batch/k; accum:1 is the plain step)")
            values["micro_batches"] = int(arg)
        elif name == CKPT:
            if arg is not None:
                raise ConfigError(f"case {text!r}: {part!r}; ckpt takes no argument, write ckpt")
            values["checkpoint"] = True
        else:
            if arg not in _AMP_DTYPES:
                raise ConfigError(f"case {text!r}: {part!r}; write amp (bfloat16), amp:bf16 or "
                                  "amp:fp16")
            values["autocast"] = _AMP_DTYPES[arg]
    return CaseText(kind=kind, step=step, **values)


def parse_case(text: str, *, blocks: int | None = None) -> tuple[str, int | None]:
    """Parse ``full``, ``grow:T`` or ``shrink:T`` into ``(kind, step)``.

    Args:
        text: the case text.
        blocks: T of the model; when given, the step is checked against it.

    Raises:
        ConfigError: on unknown kinds, malformed text or a step out of range.
    """
    match = _CASE_RE.match(text.strip())
    if match is None or match.group(1) not in KINDS:
        raise ConfigError(f"case {text!r}: not a case; write full or KIND:T, KIND one of "
                          f"{', '.join(k for k in KINDS if k != 'full')}")
    kind, raw = match.group(1), match.group(2)
    step = None if raw is None else int(raw)
    if blocks is not None:
        check_step(kind, step, blocks)
    elif step is not None and step < 1:
        raise ConfigError(f"case {text!r}: step={step}; steps are 1-based")
    elif step is None and len(KINDS[kind].steps(2)) > 0:
        raise ConfigError(f"case {text!r}: {kind} needs a step; write {kind}:T")
    elif step is not None and len(KINDS[kind].steps(2)) == 0:
        raise ConfigError(f"case {text!r}: {kind} takes no step; write {kind}")
    return kind, step


def all_cases(spec: ModelSpec, *, batch_size: int, **options: Any) -> list[TrainingCase]:
    """``full`` then every ``shrink`` step with a basic layer to fit (:func:`fitted_steps`) and
    every ``grow`` step of a model, in ProFL's order."""
    blocks = num_blocks(spec)
    cases = [TrainingCase(model=spec, kind="full", batch_size=batch_size, **options)]
    fitted = fitted_steps(spec)
    for t in reversed(fitted):
        cases.append(TrainingCase(model=spec, kind="shrink", step=t, batch_size=batch_size,
                                  **options))
    for t in range(1, blocks + 1):
        cases.append(TrainingCase(model=spec, kind="grow", step=t, batch_size=batch_size,
                                  **options))
    return cases


# --- building steps ---------------------------------------------------------------------------


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
    with unset_fake_temporarily(), torch.device("meta"):
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

    See :func:`method_step`; the method is the case kind's (:data:`KINDS`), its memory plan's
    task for :attr:`TrainingCase.base_label` gets the case's step options.
    """
    return method_step(
        KINDS[case.kind].method(case), model, case.base_label, batch_size=case.batch_size,
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
    with unset_fake_temporarily(), torch.device("meta"):
        model = construct_model(case)
    return prepare_step(case, model, fake=True)


def case_from_text(
    model: str | ModelSpec, text: str, *, batch_size: int, **options: Any
) -> TrainingCase:
    """Build a case from a model name (native input) or spec and a case text
    (``full``, ``grow:T``, ``grow:2+ckpt+accum:4``, ...; see :func:`parse_case_text`)."""
    spec = native_spec(model) if isinstance(model, str) else model
    parsed = parse_case_text(text, blocks=num_blocks(spec))
    clash = sorted(set(options) & set(parsed.options()))
    if clash:
        raise ConfigError(f"case {text!r}: {clash[0]} is set by the case text; give it once")
    return TrainingCase(model=spec, kind=parsed.kind, step=parsed.step, batch_size=batch_size,
                        **parsed.options(), **options)
