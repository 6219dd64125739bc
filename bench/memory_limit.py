"""One training case against a memory limit: the work behind the pytest plugin's
``peak_memory`` marker and ``profl_memory`` fixture (:mod:`bench.pytest_plugin`).

The limit applies to ``MemoryReport.required_bytes``, the number client selection and the
fleets use: the heap peak (kernel scratch included) when the probe knows it, as ``predict``
and ``heap`` do, else the tensor peak. ``threads`` defaults to 1, as in ``profl check``, so
the heap figure does not depend on the CI runner's core count; the numbers are those
``profl trace --json --threads 1`` prints for the same case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from bench.config_fields import check_value
from bench.suites import MODEL_SPEC_FIELDS
from bench.trace_text import render
from profl_core.errors import ConfigError
from profl_core.memory import MemoryReport, TrainingCase, case_from_text, measure
from profl_core.models import ModelSpec, check_model_name, native_spec
from profl_core.models.block_groups import check_group_syntax

MIB = float(1 << 20)
#: ModelSpec fields a test may set (the name comes as ``model``): those a suite's
#: ``[memory.model_spec."NAME"]`` table takes.
SPEC_OPTIONS = tuple(MODEL_SPEC_FIELDS)
#: TrainingCase fields a test may set (model, kind and step come as ``model`` and ``case``).
CASE_OPTIONS = tuple(f.name for f in fields(TrainingCase)
                     if f.name not in ("model", "kind", "step", "batch_size"))


def measure_case(
    model: str,
    case: str = "full",
    batch_size: int = 64,
    probe: str = "predict",
    threads: int | None = 1,
    **options: Any,
) -> MemoryReport:
    """The report of one case: ``model`` (a name ``profl trace --model`` accepts) on its
    native input, ``ModelSpec`` fields in ``options`` overriding it (:func:`model_spec`: the
    fields of a suite's ``[memory.model_spec."NAME"]`` table, checked the same way); ``case``
    text (``full``, ``grow:2``, ...); ``TrainingCase`` options (``optimizer``, ...) in
    ``options``.

    Raises:
        ConfigError: an unknown option, a bad spec field, model, case or probe (one line).
    """
    unknown = sorted(set(options) - set(SPEC_OPTIONS) - set(CASE_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; use model, case, batch_size, probe, "
                          f"threads or one of {', '.join(SPEC_OPTIONS + CASE_OPTIONS)}")
    spec = model_spec(model, {k: v for k, v in options.items() if k in SPEC_OPTIONS})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()
              if k in CASE_OPTIONS}
    training = case_from_text(spec, case, batch_size=batch_size, **values)
    return measure(training, probe=probe, threads=threads)


def model_spec(model: str, overrides: Mapping[str, Any]) -> ModelSpec:
    """``model``'s native spec with ``overrides`` over it, checked as a suite checks a
    ``[memory.model_spec."NAME"]`` table (:func:`bench.suites.load_suite`), so a test and a
    suite given the same fields measure the same case keys.

    Raises:
        ConfigError: one line naming the model and the field, e.g.
            ``model 'mynet:build': blocks = 'stem'; use a non-empty list of strings``.
    """
    if not isinstance(model, str):
        raise ConfigError(f"model={model!r}; give a model name, e.g. 'resnet18' or "
                          "'pkg.module:build'")
    check_model_name(model)
    where = f"model {model!r}:"
    values = {k: check_value(MODEL_SPEC_FIELDS[k], v, where) for k, v in overrides.items()}
    check_group_syntax(values.get("blocks", ()), where=where.removesuffix(":"))
    try:
        return native_spec(model, **values)
    except ConfigError as err:
        raise ConfigError(f"{where} {err}") from None


def over_limit(report: MemoryReport, max_mib: float) -> str | None:
    """``None`` when ``report.required_bytes`` is within ``max_mib`` MiB, else the failure
    message with the per-block table."""
    if report.required_bytes <= max_mib * MIB:
        return None
    return (f"{report.case_key} needs {report.required_bytes / MIB:,.2f} MiB "
            f"(required_bytes, {report.probe} probe) > max_mib={max_mib:g}\n"
            f"{render(report)}")


def measure_limited(
    args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[MemoryReport, float]:
    """A marker's case measured, and its limit ``max_mib``.

    Raises:
        ConfigError: positional arguments, no or a bad ``max_mib``, no model, a bad option.
    """
    if args:
        raise ConfigError("give every argument by keyword, e.g. "
                          "peak_memory(model='resnet18', case='grow:2', max_mib=120)")
    options = dict(kwargs)
    limit = options.pop("max_mib", None)
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
        raise ConfigError(f"max_mib={limit!r}; give the limit in MiB as a positive number")
    if "model" not in options:
        raise ConfigError("model is missing; e.g. model='resnet18' or 'pkg.module:build'")
    return measure_case(**options), float(limit)
