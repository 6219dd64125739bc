"""Run a suite into a run folder: tables, figures, ``result.json`` and ``report.md``.

A run folder is ``results/runs/<machine>/<utc>_<sha>_<suite>/``. Every measured case is saved
as soon as it is done, so ``--resume`` continues an interrupted run without redoing cases. The
accuracy section runs every (method, partition) pair into ``runs/<method>-<partition>/``; a run
with a ``result.json`` is finished and skipped on ``--resume``, an unfinished one continues
from its checkpoint. ``report.md``, tables and figures are then rebuilt from the folder's files
(:func:`bench.report.build_report`).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from bench.memory_suite import (
    REPO,
    measure_with_progress,
    memory_records,
)
from bench.report import build_report, run_folders
from bench.suites import AccuracySection, Suite, run_name
from bench.training import load_data, run_training
from profl_core.errors import ConfigError
from profl_core.fl import RoundRecord
from profl_core.results import Record, new_result, read_result, run_dir, write_result

RESULTS_DIR = REPO / "results"


def latest_run(suite: str, results_dir: Path = RESULTS_DIR) -> Path:
    """The newest run folder of ``suite`` on this machine (for ``--resume`` without a path)."""
    machine_dir = results_dir / "runs" / platform.node()
    runs = sorted(machine_dir.glob(f"*_{suite}")) if machine_dir.is_dir() else []
    if not runs:
        raise ConfigError(f"no earlier run of suite {suite!r} in {machine_dir}; "
                          "run it without --resume first")
    return runs[-1]


def new_run_folder(suite: str, results_dir: Path = RESULTS_DIR) -> Path:
    """A fresh run folder path for ``suite``."""
    return run_dir(results_dir, suite, repo=REPO)


def run_accuracy(
    section: AccuracySection,
    folder: Path,
    *,
    resume: bool,
    suite: str,
    data_dir: Path | None = None,
    backend: str = "local",
    log: Callable[[str], None] = print,
) -> None:
    """Run every (method, partition) pair of ``section`` into ``folder/runs/``.

    With ``resume``, runs that hold ``result.json`` are skipped and the others continue from
    their checkpoints; without it, a run folder that already holds rounds is refused.
    """
    pairs = section.runs()
    pending = [(m, p) for m, p in pairs
               if not (resume and (folder / "runs" / run_name(m, p) / "result.json").is_file())]
    if len(pending) < len(pairs):
        log(f"accuracy: {len(pairs) - len(pending)} of {len(pairs)} runs already finished")
    if not pending:
        return
    if section.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"suite {suite}: [accuracy] device = {section.device!r} but torch "
                          "sees no CUDA device; run it on a GPU machine")
    first = section.config(*pending[0], data_dir=data_dir)
    data = load_data(first)
    threads = torch.get_num_threads()
    if section.threads:
        torch.set_num_threads(section.threads)
    try:
        for index, (method, part) in enumerate(pending, start=1):
            name = run_name(method, part)
            out = folder / "runs" / name
            config = section.config(method, part, data_dir=data_dir, backend=backend)
            desc = f"{name} ({len(pairs) - len(pending) + index}/{len(pairs)})"
            with tqdm(total=config.rounds, desc=desc, unit="round", dynamic_ncols=True,
                      disable=None, leave=False) as bar:

                def progress(record: RoundRecord, bar: tqdm = bar) -> None:
                    if bar.n == 0 and record.round > 1:
                        bar.update(record.round - 1)
                    acc = "-" if record.accuracy is None else f"{record.accuracy:.3f}"
                    bar.set_postfix_str(f"{record.submodel} acc {acc}")
                    bar.update(1)

                start = time.perf_counter()
                result = run_training(config, out, resume=resume,
                                      progress=progress, data=data, suite=suite,
                                      target_accuracy=section.target_accuracy)
            final = next(iter(result.values("final_accuracy").values()))
            log(f"  {desc}: final accuracy {100 * final:.1f}% "
                f"({time.perf_counter() - start:.0f} s)")
    finally:
        torch.set_num_threads(threads)


def run_suite(
    suite: Suite, folder: Path, *, resume: bool, data_dir: Path | None = None,
    backend: str = "local",
) -> list[str]:
    """Run every section of ``suite`` into ``folder``; return the text to print.

    ``backend`` (``local``/``ray``, Ray already connected by the caller) is where training
    sections run their clients.
    """
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"suite {suite.name} -> {folder}", flush=True)  # before the progress bars
    out: list[str] = []
    if suite.zoo_models:
        from bench.commands.models import render as render_zoo  # lazy: commands import us
        from bench.commands.models import write_zoo, zoo_table

        table = zoo_table(list(suite.zoo_models), num_classes=10)
        write_zoo(table, folder / "tables")
        out += ["## Model zoo", "", render_zoo(table), ""]
    records: list[Record] = []
    extra: dict[str, object] = {}
    if suite.memory is not None:
        section = suite.memory
        reports = measure_with_progress(section, folder, resume=resume, desc="memory")
        records += memory_records(section, reports)
        extra.update(batch_size=section.batch_size, probe=section.probe,
                     models=list(section.models))
    if suite.accuracy is not None:
        run_accuracy(suite.accuracy, folder, resume=resume, suite=suite.name,
                     data_dir=data_dir, backend=backend)
        for run in run_folders(folder):
            records += read_result(run / "result.json").records
    if suite.speed is not None:
        from bench.commands.speed import run_speed

        run_speed(folder, suite.speed.select or None)
    if records:
        extra["suite_wall_s"] = time.perf_counter() - start
        write_result(folder / "result.json", new_result(suite.name, records, repo=REPO,
                                                        extra=extra))
    out += [build_report(folder)]
    out += ["", f"suite wall time {time.perf_counter() - start:.0f} s"]
    return out
