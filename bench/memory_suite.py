"""The memory section: every case of every model at one batch size, measured and tabulated.

Input: model names, a batch size, a probe, the device profiles and fleets. Output, all under one
run folder: ``cases/<case>.json`` (one MemoryReport each, so an interrupted run resumes where it
stopped), ``result.json`` (records), ``tables/*.md|csv`` and ``figures/*.png``. Tables and
figures are rebuilt from ``result.json`` alone (:func:`render_memory`), never from memory state.
With ``workers`` > 1 the ``predict`` and ``dispatch`` probes measure that many cases at once in
spawned processes (their reports do not depend on the process, only on the case and the torch
thread count, which the workers take from the caller).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tabulate import tabulate

from bench import plots
from bench.paths import fleets_dir, profiles_dir
from profl_core.devices import Fleet, load_fleet, load_profiles
from profl_core.errors import ConfigError
from profl_core.files import Fields, read_json, shown
from profl_core.memory import MemoryReport, TrainingCase, all_cases, measure
from profl_core.memory.case import num_blocks
from profl_core.memory.case_text import case_from_text, parse_case_text
from profl_core.memory.categories import Category
from profl_core.methods.width import LEVELS, level_spec
from profl_core.models import ModelSpec, native_spec
from profl_core.results import Record, ResultFile, atomic_write_text, case_hash

MIB = 1 << 20
#: Probes whose report is a function of the case and the thread count alone (no real
#: allocator, no device): only these measure cases in parallel worker processes.
PARALLEL_PROBES = ("predict", "dispatch")


def profl_cases(spec: ModelSpec, batch_size: int) -> list[TrainingCase]:
    """The full model, then ProFL's steps in training order: shrink T..2, grow 1..T."""
    return all_cases(spec, batch_size=batch_size)


#: Baseline families a memory section can add: ``heterofl`` (the ``full`` case of every width
#: level below 1, shared by HeteroFL, FedRolex and AllSmall; convolutional models only),
#: ``depthfl`` (``depth:k``: blocks 1..k with all exits) and ``inclusivefl`` (``trunc:k``:
#: blocks 1..k with the last exit).
BASELINE_METHODS: tuple[str, ...] = ("heterofl", "depthfl", "inclusivefl")


def baseline_cases(
    spec: ModelSpec, batch_size: int, methods: Sequence[str]
) -> list[TrainingCase]:
    """The sub-model cases of the baselines in ``methods`` (see :data:`BASELINE_METHODS`)."""
    unknown = sorted(set(methods) - set(BASELINE_METHODS))
    if unknown:
        raise ConfigError(f"memory methods: unknown {unknown[0]!r}; use some of "
                          f"{', '.join(BASELINE_METHODS)}")
    cases: list[TrainingCase] = []
    if "heterofl" in methods and spec.name in CONV_MODELS:
        cases += [TrainingCase(model=level_spec(spec, w), kind="full", batch_size=batch_size)
                  for w in LEVELS if w < 1.0]
    for method, kind in (("depthfl", "depth"), ("inclusivefl", "trunc")):
        if method in methods:
            cases += [TrainingCase(model=spec, kind=kind, step=k, batch_size=batch_size)
                      for k in range(1, num_blocks(spec) + 1)]
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

    ``methods`` adds the baselines' sub-models (:data:`BASELINE_METHODS`) to ProFL's cases,
    ``alternatives`` the single-device alternatives (:func:`parse_alternatives`: the full
    model, or every ProFL step, with gradient accumulation, checkpointing, autocast).
    ``model_spec`` maps a model name to spec fields over its native spec (``blocks``,
    ``in_channels``, ``input_size``, ``num_classes``, ``width``): a suite's
    ``[memory.model_spec."NAME"]`` tables, or the flags of ``profl memory``. ``workers``:
    cases measured at once, each in its own spawned process, for the :data:`PARALLEL_PROBES`
    (the others measure one case at a time in this process).
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
        """ProFL's cases of one model, the baselines' sub-models in ``methods``, then the
        cases of ``alternatives``."""
        spec = self.spec(name)
        return profl_cases(spec, self.batch_size) + baseline_cases(
            spec, self.batch_size, self.methods
        ) + alternative_cases(spec, self.batch_size, self.alternatives)

    def cases(self) -> list[TrainingCase]:
        """Every case of every model."""
        return [case for name in self.models for case in self.model_cases(name)]


def _case_file(folder: Path, case: TrainingCase) -> Path:
    return folder / "cases" / (case.key.replace("/", "_").replace(":", "-") + ".json")


def measure_section(
    section: MemorySection,
    folder: Path,
    *,
    resume: bool,
    progress: Callable[[str], None] | None = None,
) -> dict[str, MemoryReport]:
    """Measure every case, reusing ``cases/*.json`` from an earlier run when ``resume``; in
    ``section.workers`` processes for the :data:`PARALLEL_PROBES`. Reports come back in the
    section's case order, each written to its ``cases/*.json`` as it arrives."""
    cases = section.cases()
    reports: dict[str, MemoryReport] = {}
    todo: list[TrainingCase] = []
    for case in cases:
        path = _case_file(folder, case)
        if resume and path.exists():
            reports[case.key] = read_case_report(path, case, section.probe)
            if progress is not None:
                progress(case.key)
        else:
            todo.append(case)

    def keep(case: TrainingCase, report: MemoryReport) -> None:
        atomic_write_text(_case_file(folder, case), report.to_json() + "\n")
        reports[case.key] = report
        if progress is not None:
            progress(case.key)

    workers = min(section.workers, len(todo))
    if workers > 1 and section.probe in PARALLEL_PROBES:
        _measure_in_workers(todo, section.probe, workers, keep)
    else:
        for case in todo:
            keep(case, measure(case, probe=section.probe))
    return {case.key: reports[case.key] for case in cases}


def _measure_in_workers(cases: Sequence[TrainingCase], probe: str, workers: int,
                        keep: Callable[[TrainingCase, MemoryReport], None]) -> None:
    """Measure ``cases`` in ``workers`` spawned processes at this process's torch thread
    count; ``keep`` each report as it arrives. The first error cancels the cases not started
    and is raised here."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=torch.set_num_threads,
                             initargs=(torch.get_num_threads(),)) as pool:
        futures = {pool.submit(measure, case, probe=probe): case for case in cases}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    keep(futures[future], future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def read_case_report(path: Path, case: TrainingCase, probe: str) -> MemoryReport:
    """A case's saved report (``cases/<case>.json``), read through the guarded JSON reader;
    it must be this case's, measured by ``probe``.

    Raises:
        ConfigError: A file that is not a report of this case and probe, naming the fix.
    """
    fix = "delete it and resume: the case is measured again"
    data = read_json(path, "memory report", missing=fix, fix=fix)
    try:
        report = MemoryReport.from_dict(Fields(data, path, table="object", fix=fix).data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}; {fix}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as err:
        raise ConfigError(f"{path}: not a memory report ({type(err).__name__}: "
                          f"{shown(str(err))}); {fix}") from None
    if report.case_key != case.key or report.probe != probe:
        raise ConfigError(f"{path}: a report of {shown(report.case_key)} by the "
                          f"{shown(report.probe)} probe, not of {case.key} by {probe} (the "
                          "suite changed?); resume with the suite it was started with, or "
                          "use a new --out")
    return report


def measure_with_progress(
    section: MemorySection, folder: Path, *, resume: bool, desc: str
) -> dict[str, MemoryReport]:
    """:func:`measure_section` with a tqdm bar (shown on a terminal only)."""
    from tqdm import tqdm

    total = len(section.cases())
    with tqdm(total=total, desc=desc, unit="case", dynamic_ncols=True, disable=None) as bar:

        def advance(key: str) -> None:
            bar.set_postfix_str(key)
            bar.update()

        return measure_section(section, folder, resume=resume, progress=advance)


def fleets_for(reference_peak_bytes: int, devices: Path | None = None) -> list[Fleet]:
    """Every fleet of the devices folder ``devices`` (default: the shipped one); relative
    fleets are scaled to ``reference_peak_bytes``."""
    profiles = load_profiles(profiles_dir(devices))
    folder = fleets_dir(devices)
    return [
        load_fleet(path, profiles, reference_peak_bytes=reference_peak_bytes)
        for path in (sorted(folder.glob("*.toml")) if folder.is_dir() else [])
    ]


def memory_records(
    section: MemorySection, reports: dict[str, MemoryReport], devices: Path | None = None
) -> list[Record]:
    """Result records: bytes per case, block and category; ProFL's peak; participation.

    ``peak_bytes`` and ``block_peak_bytes:*`` are the tensor peaks (deterministic: what the
    gate compares); ``heap_peak_bytes`` and ``block_heap_peak_bytes:*`` the heap peaks, when
    the probe knows them (machine- and thread-dependent, not gated). Participation and the
    relative fleets use ``required_bytes`` (the heap figure when known), as training does;
    the fleets are those of the devices folder ``devices`` (default: the shipped one).
    """
    records: list[Record] = []
    for name in section.models:
        cases = section.model_cases(name)
        full = reports[cases[0].key]
        fleets = fleets_for(full.required_bytes, devices)
        for case in cases:
            report = reports[case.key]
            h = case_hash(case.params())
            peak_block, peak_phase = report.peak_at or ("", "")
            if report.heap_peak_bytes is not None:
                records.append(Record(key=case.key, metric="heap_peak_bytes",
                                      value=report.heap_peak_bytes, unit="B", case_hash=h))
            records += [
                Record(key=case.key, metric="peak_bytes", value=report.tensor_peak_bytes,
                       unit="B", case_hash=h),
                Record(key=case.key, metric="baseline_bytes", value=report.baseline_bytes,
                       unit="B", case_hash=h),
                Record(key=case.key, metric=f"peak_at:{peak_block}:{peak_phase}", value=1,
                       unit="flag", case_hash=h),
            ]
            records += [
                Record(key=case.key, metric=f"breakdown_bytes:{cat}", value=b, unit="B",
                       case_hash=h)
                for cat, b in report.peak_breakdown.items()
            ]
            records += [
                Record(key=case.key, metric=f"block_peak_bytes:{bp.block}:{bp.phase}",
                       value=bp.tensor_peak_bytes, unit="B", case_hash=h)
                for bp in report.blocks
            ]
            records += [
                Record(key=case.key, metric=f"block_heap_peak_bytes:{bp.block}:{bp.phase}",
                       value=bp.heap_peak_bytes, unit="B", case_hash=h)
                for bp in report.blocks if bp.heap_peak_bytes is not None
            ]
            records += [
                Record(key=case.key, metric=f"participation:{fleet.name}",
                       value=fleet.participation(report.required_bytes), unit="ratio",
                       case_hash=h)
                for fleet in fleets
            ]
        steps = [reports[c.key] for c in cases[1:]
                 if c.kind in ("grow", "shrink") and not c.modifiers]
        grow = [reports[c.key] for c in cases if c.kind == "grow" and not c.modifiers]
        model_key = f"{name}/profl/bs{section.batch_size}"
        profl_peak = max(r.tensor_peak_bytes for r in steps)
        records += [
            Record(key=model_key, metric="full_peak_bytes", value=full.tensor_peak_bytes,
                   unit="B"),
            Record(key=model_key, metric="profl_peak_bytes", value=profl_peak, unit="B"),
            Record(key=model_key, metric="grow_peak_bytes",
                   value=max(r.tensor_peak_bytes for r in grow), unit="B"),
            Record(key=model_key, metric="reduction",
                   value=1 - profl_peak / full.tensor_peak_bytes, unit="ratio"),
        ]
        heaps = [r.heap_peak_bytes for r in steps]
        if full.heap_peak_bytes is not None and all(h is not None for h in heaps):
            profl_heap = max(h for h in heaps if h is not None)
            records += [
                Record(key=model_key, metric="full_heap_peak_bytes", value=full.heap_peak_bytes,
                       unit="B"),
                Record(key=model_key, metric="profl_heap_peak_bytes", value=profl_heap,
                       unit="B"),
                Record(key=model_key, metric="heap_reduction",
                       value=1 - profl_heap / full.heap_peak_bytes, unit="ratio"),
            ]
        for alternative in section.alternatives:
            if not alternative.startswith(PROFL_PREFIX):
                continue
            mods = tuple(alternative[len(PROFL_PREFIX):].split("+"))
            modified = [reports[c.key] for c in cases
                        if c.kind in ("grow", "shrink") and c.modifiers == mods]
            records.append(Record(key=model_key, metric=f"profl_peak_bytes:{'+'.join(mods)}",
                                  value=max(r.tensor_peak_bytes for r in modified), unit="B"))
            mod_heaps = [r.heap_peak_bytes for r in modified if r.heap_peak_bytes is not None]
            if len(mod_heaps) == len(modified):
                records.append(Record(key=model_key,
                                      metric=f"profl_heap_peak_bytes:{'+'.join(mods)}",
                                      value=max(mod_heaps), unit="B"))
    return records


# ------------------------------------------------------------------------------------ rendering


def _split_key(key: str) -> tuple[str, str]:
    model, case, _batch = key.split("/")
    return model, case


def case_frame(result: ResultFile) -> pd.DataFrame:
    """One row per case: model, case, peak, baseline and where the peak happened (MiB)."""
    rows: dict[str, dict[str, object]] = {}
    for r in result.records:
        if r.unit == "B" and r.metric in ("peak_bytes", "heap_peak_bytes", "baseline_bytes"):
            model, case = _split_key(r.key)
            row = rows.setdefault(r.key, {"model": model, "case": case})
            row[r.metric.replace("_bytes", "_mib")] = r.value / MIB
        elif r.metric.startswith("peak_at:"):
            _, block, phase = r.metric.split(":")
            rows.setdefault(r.key, {})["peak_at"] = f"{block} {phase}"
    return pd.DataFrame(list(rows.values()))


def summary_frame(result: ResultFile) -> pd.DataFrame:
    """One row per model: full-model peak, ProFL peak and the reduction (tensor, and heap
    when the probe knows it)."""
    rows: dict[str, dict[str, object]] = {}
    for r in result.records:
        if r.key.count("/") == 2 and "/profl/" in r.key:
            row = rows.setdefault(r.key, {"model": r.key.split("/")[0]})
            if r.unit == "B":
                row[r.metric.replace("_bytes", "_mib")] = r.value / MIB
            else:
                row[r.metric + "_%"] = 100 * r.value
    return pd.DataFrame(list(rows.values()))


def alternatives_frame(result: ResultFile) -> pd.DataFrame:
    """Per model: the full model, its single-device alternatives (``full+<mods>``), ProFL's
    largest step and ProFL's largest step with each of its alternatives' modifiers: tensor and
    heap peaks (MiB) and both in % of the full model's. Empty without alternatives."""
    cases = case_frame(result)
    if cases.empty or not cases["case"].str.contains("+", regex=False).any():
        return pd.DataFrame()
    rows: list[dict[str, object]] = []
    for model, part in cases.groupby("model", sort=False):
        if not part["case"].str.contains("+", regex=False).any():
            continue  # width variants and models without alternatives
        base = part["case"].str.split("+", n=1).str[0]
        mods = part["case"].str.split("+", n=1).str[1].fillna("")
        full = part[part["case"] == "full"]
        if full.empty:
            continue
        full_peak = float(full["peak_mib"].iloc[0])
        full_heap = float(full["heap_peak_mib"].iloc[0]) if "heap_peak_mib" in part else None
        entries: list[tuple[str, str, pd.DataFrame]] = [
            (case, "", part[part["case"] == case])
            for case in part["case"][base == "full"]]
        steps = part[base.str.startswith(("grow:", "shrink:"))]
        for mod in dict.fromkeys(mods[steps.index]):
            group = steps[mods[steps.index] == mod]
            largest = group.loc[group["peak_mib"].idxmax()]
            label = "profl" if not mod else f"profl+{mod}"
            entries.append((label, str(largest["case"]).split("+", 1)[0], group))
        for label, step, group in entries:
            row: dict[str, object] = {"model": model, "case": label, "largest step": step,
                                      "peak_mib": group["peak_mib"].max(),
                                      "peak_%_of_full": 100 * group["peak_mib"].max() / full_peak}
            if full_heap is not None:
                row["heap_peak_mib"] = group["heap_peak_mib"].max()
                row["heap_%_of_full"] = 100 * group["heap_peak_mib"].max() / full_heap
            rows.append(row)
    return pd.DataFrame(rows)


def breakdown_frame(result: ResultFile) -> pd.DataFrame:
    """Long form: model, case, category, MiB at the case's peak."""
    rows = [
        {**dict(zip(("model", "case"), _split_key(r.key), strict=True)),
         "category": r.metric.split(":", 1)[1], "mib": r.value / MIB}
        for r in result.records if r.metric.startswith("breakdown_bytes:")
    ]
    return pd.DataFrame(rows)


def block_frame(result: ResultFile) -> pd.DataFrame:
    """Long form: model, case, block, phase, peak MiB of that segment."""
    rows = []
    for r in result.records:
        if r.metric.startswith("block_peak_bytes:"):
            _, block, phase = r.metric.split(":")
            model, case = _split_key(r.key)
            rows.append({"model": model, "case": case, "block": block, "phase": phase,
                         "mib": r.value / MIB})
    return pd.DataFrame(rows)


def participation_frame(result: ResultFile) -> pd.DataFrame:
    """Long form: model, case, fleet, share of devices that can train the case (%)."""
    rows = [
        {**dict(zip(("model", "case"), _split_key(r.key), strict=True)),
         "fleet": r.metric.split(":", 1)[1], "participation_%": 100 * r.value}
        for r in result.records if r.metric.startswith("participation:")
    ]
    return pd.DataFrame(rows)


CATEGORY_ORDER = [str(c) for c in Category]


def render_memory(result: ResultFile, folder: Path) -> list[Path]:
    """Write the memory tables (markdown + CSV) and figures (PNG) from a result file."""
    written: list[Path] = []
    tables = {
        "memory_summary": summary_frame(result),
        "memory_cases": case_frame(result),
        "memory_participation": participation_frame(result).pivot_table(
            index=["model", "case"], columns="fleet", values="participation_%", sort=False
        ).reset_index(),
        "memory_alternatives": alternatives_frame(result),
    }
    for name, frame in tables.items():
        if frame.empty and name == "memory_alternatives":
            continue
        md = folder / "tables" / f"{name}.md"
        atomic_write_text(md, tabulate(frame, headers="keys", tablefmt="github",
                                       showindex=False, floatfmt=".1f") + "\n")
        csv = md.with_suffix(".csv")
        atomic_write_text(csv, frame.to_csv(index=False))
        written += [md, csv]
    written += plots.memory_figures(
        breakdown_frame(result), block_frame(result), participation_frame(result),
        folder / "figures", category_order=CATEGORY_ORDER,
    )
    return written


def summary_text(result: ResultFile) -> str:
    """The per-model summary as a markdown table (what the CLI prints), then the
    alternatives table when the section has alternatives."""
    text = tabulate(summary_frame(result), headers="keys", tablefmt="github", showindex=False,
                    floatfmt=".1f")
    alternatives = alternatives_frame(result)
    if not alternatives.empty:
        text += "\n\nSingle-device alternatives (tensor and heap peaks):\n\n" + tabulate(
            alternatives, headers="keys", tablefmt="github", showindex=False, floatfmt=".1f")
    return text

