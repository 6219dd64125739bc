"""Which cases a memory section measures: ProFL's steps, the baselines' sub-models and the
single-device alternatives of each model at one batch size (:class:`MemorySection`).

Measuring them is :mod:`bench.memory_measure`; the tables and figures are
:mod:`bench.memory_render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from profl_core.errors import ConfigError
from profl_core.files import shown
from profl_core.memory import TrainingCase, all_cases
from profl_core.memory.case import num_blocks
from profl_core.memory.case_text import case_from_text, parse_case_text
from profl_core.methods.registry import METHODS, check_methods
from profl_core.methods.width import LEVELS, level_spec
from profl_core.models import ModelSpec, native_spec


def profl_cases(spec: ModelSpec, batch_size: int) -> list[TrainingCase]:
    """The full model, then ProFL's steps in training order: shrink T..2, grow 1..T."""
    return all_cases(spec, batch_size=batch_size)


def method_cases(
    spec: ModelSpec, batch_size: int, methods: Sequence[str]
) -> list[TrainingCase]:
    """The sub-model cases of the registered ``methods``
    (:data:`~profl_core.methods.registry.METHODS`), in their order: with ``widths`` the
    ``full`` case of every width level below 1 (convolutional models only: HeteroFL, FedRolex,
    AllSmall), then every step of each memory kind they declare (DepthFL's ``depth:k``: blocks
    1..k with all exits; InclusiveFL's ``trunc:k``: blocks 1..k with the last exit).
    :meth:`MemorySection.model_cases` drops those ProFL's cases already hold."""
    cases: list[TrainingCase] = []
    for name in check_methods(methods, "memory methods"):
        info = METHODS[name]
        if info.widths and spec.name in CONV_MODELS:
            cases += [TrainingCase(model=level_spec(spec, w), kind="full",
                                   batch_size=batch_size) for w in LEVELS if w < 1.0]
        for kind in info.kinds:
            steps = kind.steps(num_blocks(spec))
            cases += [TrainingCase(model=spec, kind=kind.name, step=k, batch_size=batch_size)
                      for k in (steps or [None])]
    return cases


CONV_MODELS: tuple[str, ...] = ("cnn", "resnet18", "resnet34", "vgg11", "vgg16")

#: An alternative that starts with this applies its modifiers to every ProFL step.
PROFL_PREFIX = "profl+"


def parse_alternatives(value: Any, batch_size: int, where: str) -> tuple[str, ...]:
    """The single-device alternatives of a memory section, canonical: each a modifier text
    (``accum:4``, ``ckpt+accum:4``, ``amp``: the full model with it) or ``profl+`` and one
    (every ProFL step with it; the table reports the largest).

    Raises:
        ConfigError: not a list of strings, an entry that is not modifiers only, a k that does
            not divide ``batch_size``, or the same alternative twice (``where`` names the field).
    """
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} = {shown(value)}: use a list of modifier texts, e.g. "
                          '["accum:4", "ckpt", "amp", "profl+accum:4"]')
    out: list[str] = []
    for entry in value:
        profl = entry.startswith(PROFL_PREFIX)
        mods = entry[len(PROFL_PREFIX):] if profl else entry
        try:
            parsed = parse_case_text(f"full+{mods}")
        except ConfigError:
            raise ConfigError(f"{where}: {entry!r}: write modifiers only (accum:k, ckpt, amp, "
                              "amp:fp16, joined by +), or profl+ and modifiers for every ProFL "
                              "step") from None
        if batch_size % parsed.micro_batches:
            raise ConfigError(f"{where}: {entry!r}: accum:{parsed.micro_batches} does not "
                              f"divide batch_size {batch_size}; use a k that divides it")
        canonical = "+".join(parsed.modifiers)
        text = PROFL_PREFIX + canonical if profl else canonical
        if text in out:
            raise ConfigError(f"{where}: {entry!r} is {text!r} again; list each alternative once")
        out.append(text)
    return tuple(out)


def alternative_cases(
    spec: ModelSpec, batch_size: int, alternatives: Sequence[str]
) -> list[TrainingCase]:
    """The cases of ``alternatives`` (see :func:`parse_alternatives`): ``full+<mods>``, or
    every ProFL step (shrink T..2, grow 1..T) ``+<mods>`` for ``profl+<mods>``."""
    steps = [c.base_label for c in profl_cases(spec, batch_size) if c.kind != "full"]
    cases: list[TrainingCase] = []
    for alternative in alternatives:
        if alternative.startswith(PROFL_PREFIX):
            mods = alternative[len(PROFL_PREFIX):]
            cases += [case_from_text(spec, f"{step}+{mods}", batch_size=batch_size)
                      for step in steps]
        else:
            cases.append(case_from_text(spec, f"full+{alternative}", batch_size=batch_size))
    return cases


@dataclass(frozen=True)
class MemorySection:
    """What to measure: models on their native inputs at one batch size with one probe.

    ``methods`` adds the sub-models of registered methods (:func:`method_cases`) to ProFL's,
    ``alternatives`` the single-device alternatives (:func:`parse_alternatives`: the full
    model, or every ProFL step, with gradient accumulation, checkpointing, autocast).
    ``model_spec`` maps a model name to spec fields over its native spec (``blocks``,
    ``in_channels``, ``input_size``, ``num_classes``, ``width``): a suite's
    ``[memory.model_spec."NAME"]`` tables, or the flags of ``profl memory``. ``workers``:
    cases measured at once, each in its own spawned process, for the
    :data:`~bench.memory_measure.PARALLEL_PROBES` (the others measure one case at a time in
    this process).
    """

    models: tuple[str, ...]
    batch_size: int = 64
    probe: str = "predict"
    num_classes: int = 10
    methods: tuple[str, ...] = ()
    model_spec: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    alternatives: tuple[str, ...] = ()
    workers: int = 1

    def spec(self, name: str) -> ModelSpec:
        """The spec of one model: native, the section's classes, then its ``model_spec``."""
        return native_spec(name, **{"num_classes": self.num_classes,
                                    **self.model_spec.get(name, {})})

    def model_cases(self, name: str) -> list[TrainingCase]:
        """ProFL's cases of one model, the sub-models of ``methods``, then the cases of
        ``alternatives``; each case once."""
        spec = self.spec(name)
        cases = profl_cases(spec, self.batch_size) + method_cases(
            spec, self.batch_size, self.methods
        ) + alternative_cases(spec, self.batch_size, self.alternatives)
        unique: dict[str, TrainingCase] = {}
        for case in cases:
            unique.setdefault(case.key, case)
        return list(unique.values())

    def cases(self) -> list[TrainingCase]:
        """Every case of every model."""
        return [case for name in self.models for case in self.model_cases(name)]
