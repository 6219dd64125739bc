"""The memory table: one :class:`MemoryReport` per training case.

Methods look up ``required_bytes`` here (never from a parameter ratio) to decide which devices
can train which sub-model.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from profl_core.errors import ConfigError
from profl_core.fl.method import Method
from profl_core.memory import dispatch, measure, predict
from profl_core.memory.case import TrainingCase
from profl_core.memory.report import MemoryReport
from profl_core.memory.step import method_step
from profl_core.models import ModelSpec, build_model, on_meta


def memory_table(
    cases: Iterable[TrainingCase], *, probe: str = "predict"
) -> dict[str, MemoryReport]:
    """Measure every case with ``probe``; keyed by :attr:`TrainingCase.key`, in input order.

    Raises:
        ConfigError: when two cases share a key (the table would silently drop one).
    """
    table: dict[str, MemoryReport] = {}
    for case in cases:
        if case.key in table:
            raise ConfigError(f"memory table: case {case.key} appears twice; list it once")
        table[case.key] = measure(case, probe=probe)
    return table


def required_bytes_table(
    cases: Iterable[TrainingCase], *, probe: str = "predict"
) -> dict[str, int]:
    """``required_bytes`` of every case, keyed by :attr:`TrainingCase.key`."""
    return {key: r.required_bytes for key, r in memory_table(cases, probe=probe).items()}


def method_table(
    method: Method,
    spec: ModelSpec,
    *,
    batch_size: int,
    frozen_bn: str = "eval",
    probe: str = "predict",
) -> dict[str, MemoryReport]:
    """One report per sub-model of ``method``'s memory plan, keyed by sub-model name.

    Each is the client step the method's clients run (:func:`~profl_core.memory.step.method_step`:
    the method's ``submodel()`` and :class:`~profl_core.fl.local.LocalStep`). ``method`` must
    be a fresh instance: its ``init_state`` is called (on the meta device for ``predict``).

    Args:
        method: the method whose sub-models are measured.
        spec: the global model.
        batch_size: the run's local batch size.
        frozen_bn: the engine's ``frozen_bn`` setting.
        probe: ``predict`` (fake tensors, nothing allocated) or ``dispatch`` (real tensors).
    """
    if probe not in ("predict", "dispatch"):
        raise ConfigError(f"method memory table: probe {probe!r}; use predict or dispatch")
    with on_meta():
        meta_model = build_model(spec)
        names = list(method.memory_plan(method.init_state(meta_model, np.random.default_rng(0))))
    out: dict[str, MemoryReport] = {}
    model = meta_model
    if probe == "dispatch":  # one real model for every sub-model (init_state copies it)
        model = build_model(spec, generator=torch.Generator().manual_seed(0))
    for name in names:
        key = f"{method.name}/{spec.name}@w{spec.width:g}/{name}/bs{batch_size}"
        if probe == "predict":
            out[name] = predict.measure_fake(lambda name=name, key=key: method_step(
                method, meta_model, name, batch_size=batch_size, key=key,
                frozen_bn=frozen_bn, fake=True))
        else:
            out[name] = dispatch.measure_step(method_step(
                method, model, name, batch_size=batch_size, key=key, frozen_bn=frozen_bn))
    return out
