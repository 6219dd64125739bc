"""The case-text grammar: ``BASE[+MOD...]`` (``full``, ``grow:2``, ``grow:2+ckpt+accum:4``).

The base is ``full`` or ``KIND:T`` with a memory kind of a registered method
(:func:`~profl_core.methods.registry.memory_kinds`).
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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from profl_core.errors import ConfigError, field_names
from profl_core.fl.types import StepOptions
from profl_core.memory.case import TrainingCase, check_step, num_blocks
from profl_core.memory.modifiers import ACCUM, CKPT, MODIFIERS, modifier_texts
from profl_core.methods.registry import memory_kinds
from profl_core.models import ModelSpec, native_spec

__all__ = ["CaseText", "case_from_text", "parse_case", "parse_case_text"]

_AMP_DTYPES: dict[str | None, str] = {None: "bfloat16", "bf16": "bfloat16", "fp16": "float16"}
_GRAMMAR = "write BASE[+MOD...] with MOD accum:k, ckpt, amp, amp:bf16 or amp:fp16"
_CASE_RE = re.compile(r"^([a-z]+)(?::(-?\d+))?$")
_PART_RE = re.compile(r"^([a-z0-9]+)(?::([a-z0-9-]+))?$")


@dataclass(frozen=True, kw_only=True)
class CaseText(StepOptions):
    """A parsed case text: the base sub-model and its step options (``accum:k`` ->
    ``micro_batches``, ``ckpt`` -> ``checkpoint``, ``amp``/``amp:bf16`` -> ``"bfloat16"`` and
    ``amp:fp16`` -> ``"float16"`` ``autocast``).

    Attributes:
        kind: a memory kind (:func:`~profl_core.methods.registry.memory_kinds`).
        step: the base's step (None for ``full``).
    """

    kind: str
    step: int | None

    def options(self) -> dict[str, Any]:
        """The step options as :class:`TrainingCase` fields."""
        return {name: getattr(self, name) for name in field_names(StepOptions)}

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
            what = (f"the base {part} comes first" if name in memory_kinds() and bare
                    else "a second base; a case has one" if name in memory_kinds()
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
    kinds = memory_kinds()
    if match is None or match.group(1) not in kinds:
        raise ConfigError(f"case {text!r}: not a case; write full or KIND:T, KIND one of "
                          f"{', '.join(k for k in kinds if k != 'full')}")
    kind, raw = match.group(1), match.group(2)
    step = None if raw is None else int(raw)
    if blocks is not None:
        check_step(kind, step, blocks)
    elif step is not None and step < 1:
        raise ConfigError(f"case {text!r}: step={step}; steps are 1-based")
    elif step is None and len(kinds[kind].steps(2)) > 0:
        raise ConfigError(f"case {text!r}: {kind} needs a step; write {kind}:T")
    elif step is not None and len(kinds[kind].steps(2)) == 0:
        raise ConfigError(f"case {text!r}: {kind} takes no step; write {kind}")
    return kind, step


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
