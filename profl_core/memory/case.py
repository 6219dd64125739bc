"""One training configuration to measure (DESIGN §3 TrainingCase): a client step of a method.

A :class:`TrainingCase` names a model spec, a *kind* of sub-model and its step, a batch size,
the optimizer and the dtype. A case is not a step built for measuring: it is the step a client
of the kind's method runs (:mod:`profl_core.memory.step` builds it from the method's declared
memory plan). Its :attr:`~TrainingCase.key` names it in every report and baseline.

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
``fedepth:S`` (S = 100 a + b, 1 <= a <= b <= T)
    FeDepth's group step: blocks 1..a-1 frozen (``no_grad``), blocks a..b and the head
    trainable, the later blocks skipped by a parameter-free link to the head, cross-entropy.

The step options (gradient accumulation, checkpointing, autocast) are the case's
``micro_batches``, ``checkpoint`` and ``autocast``; labels and keys write them as modifiers
(:mod:`profl_core.memory.modifiers`), and :mod:`profl_core.memory.case_text` reads a case text
such as ``grow:2+ckpt+accum:4``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from profl_core.errors import ConfigError, field_names, reject_unknown_keys
from profl_core.fl.types import StepOptions
from profl_core.memory.modifiers import modifier_texts
from profl_core.methods.registry import memory_kinds
from profl_core.models import (
    ModelSpec,
    build_model,
    check_model_name,
    fitted_basic_layers,
    native_spec,
    on_meta,
    partition_blocks,
)

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

__all__ = [
    "DTYPES",
    "OPTIMIZERS",
    "TrainingCase",
    "all_cases",
    "check_step",
    "fitted_steps",
    "num_blocks",
]


#: Specs whose block count and fitted steps are remembered (a planner run meets hundreds).
SPEC_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=SPEC_CACHE_SIZE)
def num_blocks(spec: ModelSpec) -> int:
    """T for a model spec: its groups' count when they are its blocks
    (:func:`~profl_core.models.partition_blocks`), else from a model built on the meta device
    (nothing is allocated)."""
    known = partition_blocks(spec)
    if known is not None:
        return known
    with on_meta():
        return build_model(spec).num_blocks


@functools.lru_cache(maxsize=SPEC_CACHE_SIZE)
def fitted_steps(spec: ModelSpec) -> tuple[int, ...]:
    """:func:`~profl_core.models.fitted_basic_layers` of ``spec``: every step 2..T of a spec
    cut into groups without identity stand-ins (:func:`~profl_core.models.partition_blocks`),
    else from a model built on the meta device."""
    if spec.blocks and not spec.identity_standins:
        return tuple(range(2, num_blocks(spec) + 1))
    with on_meta():
        model = build_model(spec)
        if model.num_blocks < 2:
            return ()
        return fitted_basic_layers(model.output_module(1), model.num_blocks)




@dataclass(frozen=True, kw_only=True)
class TrainingCase(StepOptions):
    """One training configuration to measure or run.

    Attributes:
        model: the model spec (width multiplier included).
        kind: a memory kind of a registered method (``full``, ``grow``, ``shrink``, ``depth``,
            ``trunc``: :func:`~profl_core.methods.registry.memory_kinds`).
        step: 1-based step (or depth) for every kind but ``full``; ``None`` for ``full``.
        batch_size: samples per step.
        optimizer: ``sgd`` (momentum 0.9, weight decay 5e-4) or ``adam``.
        dtype: parameter and input dtype name (``float32``, ``bfloat16``, ...).
        frozen_bn_eval: put frozen blocks in eval mode (batch-norm statistics stay fixed).
        foreach: the optimizer's multi-tensor kernels (:attr:`ClientTask.foreach`): None is
            the device's default (foreach on CUDA, a per-parameter loop on the CPU); True
            models a CUDA step's optimizer with ``predict``.

        Step options (:class:`~profl_core.fl.types.StepOptions`): ``micro_batches``
        (``accum:k``; here it must divide ``batch_size``), ``checkpoint`` (``ckpt``) and
        ``autocast`` (``amp``: ``"bfloat16"``, ``amp:fp16``: ``"float16"``).
    """

    model: ModelSpec
    kind: str
    step: int | None = None
    batch_size: int
    optimizer: str = "sgd"
    dtype: str = "float32"
    frozen_bn_eval: bool = True
    foreach: bool | None = None

    def _where(self) -> str:
        return "case "

    def __post_init__(self) -> None:
        check_model_name(self.model.name)
        kinds = memory_kinds()
        if not isinstance(self.kind, str) or self.kind not in kinds:
            raise ConfigError(f"case kind={self.kind!r}; use one of {', '.join(kinds)}")
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
        super().__post_init__()  # the step options
        k = self.micro_batches
        if self.batch_size % k:
            divisors = [d for d in range(2, self.batch_size + 1) if self.batch_size % d == 0]
            fix = (f"use a k that divides it ({', '.join(map(str, divisors[:6]))}"
                   f"{', ...' if len(divisors) > 6 else ''})" if divisors
                   else "a batch of 1 has no micro-batches; drop accum")
            raise ConfigError(f"case {self.base_label}+accum:{k}: {k} does not divide the batch "
                              f"size {self.batch_size}; {fix}")

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
    valid = memory_kinds()[kind].steps(blocks)
    if len(valid) == 0:
        if step is not None:
            raise ConfigError(f"case {kind}: step={step}; {kind} takes no step, write {kind!r}")
        return
    if step is None or step not in valid:
        span = (f"in {valid.start}..{valid.stop - 1}" if isinstance(valid, range)
                else f"one of {', '.join(map(str, valid))}")
        raise ConfigError(f"case {kind}: step={step}; use {kind}:T with T {span}")


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
