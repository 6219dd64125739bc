"""Measuring a memory section: every case, resumable, in worker processes, then result records.

Input: a :class:`~bench.memory_cases.MemorySection`, its run folder, the device profiles and
fleets. Output under the run folder: ``cases/<case>.json`` (one MemoryReport each, so an
interrupted run resumes where it stopped); :func:`memory_records` turns the reports into the
records of ``result.json``, from which :mod:`bench.memory_render` rebuilds the tables and
figures. With ``workers`` > 1 the ``predict`` and ``dispatch`` probes measure that many cases at
once in spawned processes (their reports do not depend on the process, only on the case and
the torch thread count, which the workers take from the caller).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from bench.memory_cases import PROFL_PREFIX, MemorySection
from bench.paths import fleets_dir, profiles_dir
from profl_core.devices import Fleet, load_fleet, load_profiles
from profl_core.errors import ConfigError
from profl_core.files import Fields, read_json, shown
from profl_core.memory import MemoryReport, TrainingCase, measure
from profl_core.methods.registry import load_plugins
from profl_core.results import Record, atomic_write_text, case_hash

#: Probes whose report is a function of the case and the thread count alone (no real
#: allocator, no device): only these measure cases in parallel worker processes.
PARALLEL_PROBES = ("predict", "dispatch")


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
                             initializer=_init_worker,
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


def _init_worker(threads: int) -> None:
    """A spawned measuring process: this process's thread count and the method plugins (it
    starts with the built-in methods only)."""
    torch.set_num_threads(threads)
    load_plugins()


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
                Record(key=case.key, metric="before_step_bytes", value=report.before_step_bytes,
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
