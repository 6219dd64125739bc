"""Run a suite into a run folder: tables, figures, ``result.json`` and ``report.md``.

A run folder is ``results/runs/<machine>/<utc>_<sha>_<suite>/``. Every measured case is saved
as soon as it is done, so ``--resume`` continues an interrupted run without redoing cases. The
accuracy section runs every (label, partition, seed) into ``runs/<label>-<partition>-s<seed>/``,
``workers`` runs at once in spawned processes, the longest first (:func:`schedule`); a run with
a ``result.json`` is finished and skipped on ``--resume``, an unfinished one continues from its
checkpoint. Each distinct memory table is predicted once per suite into ``plans/``
(:func:`bench.training.shared_table`), by the pool before its runs. ``report.md``,
tables and figures are then rebuilt from the folder's files (:func:`bench.report.build_report`).
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from tqdm import tqdm

from bench.memory_measure import fleets_for, measure_with_progress, memory_records
from bench.paths import CHECKOUT, RESULTS_DIR
from bench.report import build_report
from bench.run_files import (
    RUN_FILE,
    check_resume,
    config_changes,
    read_run_record,
    read_run_result,
)
from bench.run_frames import run_folders
from bench.run_settings import TrainingConfig, make_method
from bench.speed import run_speed
from bench.suites import AccuracySection, Suite, run_name
from bench.training import (
    PLANS_DIR,
    check_inputs,
    federated_data,
    load_data,
    model_spec,
    run_training,
    shared_table,
)
from bench.zoo import render as render_zoo
from bench.zoo import write_zoo, zoo_table
from profl_core.data import ArrayDataset
from profl_core.errors import ConfigError
from profl_core.files import check_writable_dir
from profl_core.fl import RoundRecord
from profl_core.methods.registry import load_plugins
from profl_core.results import (
    Record,
    ResultFile,
    new_result,
    run_dir,
    write_result,
)


def latest_run(suite: str, results_dir: Path = RESULTS_DIR) -> Path:
    """The newest run folder of ``suite`` on this machine (for ``--resume`` without a path)."""
    machine_dir = results_dir / "runs" / platform.node()
    runs = sorted(machine_dir.glob(f"*_{suite}")) if machine_dir.is_dir() else []
    if not runs:
        raise ConfigError(f"no earlier run of suite {suite!r} in {machine_dir}; "
                          "run it without --resume first")
    return runs[-1]


def check_run_folder(folder: Path, *, resume: bool) -> None:
    """Before any work: ``folder`` can take a suite run's files and, with ``resume``, holds a
    run to continue (else an error naming the fix)."""
    check_writable_dir(folder)
    if not resume:
        return
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ConfigError(f"{folder}: nothing to resume (no suite run in this folder); drop "
                          "--resume or give the folder of an interrupted run")


def new_run_folder(suite: str, results_dir: Path = RESULTS_DIR) -> Path:
    """A fresh run folder path for ``suite``."""
    return run_dir(results_dir, suite, repo=CHECKOUT)


@dataclass(frozen=True)
class _Job:
    """One training run of a suite, as sent to a worker process (picklable)."""

    name: str
    config: TrainingConfig
    out: Path
    resume: bool
    suite: str
    target_accuracy: float
    plans: Path | None = None


#: Measured training time (s) of one run of each method in the default suite's setting
#: (150 rounds of cnn at width 0.25, 2 workers; the default suite's methods: means of its 3
#: seeds in the run of docs/results.md; the others from the earlier runs there and in
#: docs/baselines.md): the cost :func:`schedule` orders runs by.
#: A method not listed counts as the longest.
RUN_COST_S = {"profl": 50, "profl-accum": 124, "fedavg": 92, "alllarge": 92,
              "exclusivefl": 39, "allsmall": 51, "fedavg-fit": 139, "heterofl": 68,
              "fedrolex": 81, "depthfl": 58, "inclusivefl": 71, "slt": 45, "fedepth": 115,
              "neulite": 55}

#: Measured time (s) to predict each method's memory table in that setting (docs/baselines.md);
#: the other methods' take 0.4-3.6 s.
PLAN_COST_S = {"profl-accum": 55, "fedavg-fit": 29}


def run_cost(config: TrainingConfig) -> float:
    """A run's estimated training time: :data:`RUN_COST_S` of its method, scaled by its rounds
    and local epochs against the measured setting's (150 and 1); unknown methods the
    longest."""
    cost = RUN_COST_S.get(config.method, max(RUN_COST_S.values()))
    return cost * config.rounds * config.local_epochs / 150


def schedule(jobs: list[_Job]) -> list[_Job]:
    """``jobs`` longest first by :func:`run_cost` (ties in suite order), so that a pool of
    workers does not end with one long run alone (the longest-processing-time rule)."""
    return sorted(jobs, key=lambda job: -run_cost(job.config))


@dataclass(frozen=True)
class _Outcome:
    """What a finished run reports back."""

    name: str
    status: str  # "completed" or "diverged"
    final_accuracy: float | None
    message: str
    wall_s: float


def _outcome(name: str, result: ResultFile, wall_s: float) -> _Outcome:
    status = str(result.extra.get("status", "completed"))
    final = next(iter(result.values("smoothed_final_accuracy").values()),  # final_% of the table
                 next(iter(result.values("final_accuracy").values()), None))
    message = str(result.extra.get("diverged", {}).get("message", "")) \
        if status == "diverged" else ""
    return _Outcome(name=name, status=status, final_accuracy=final, message=message,
                    wall_s=wall_s)


class _Progress:
    """One tqdm bar over the rounds of every pending run, and one line per finished run."""

    def __init__(self, jobs: list[_Job], done_before: int, total_runs: int,
                 log: Callable[[str], None]) -> None:
        self.rounds = {job.name: job.config.rounds for job in jobs}
        self.last = dict.fromkeys(self.rounds, 0)
        self.finished = done_before
        self.total_runs = total_runs
        self.log = log
        self.bar = tqdm(total=sum(self.rounds.values()), desc="accuracy", unit="round",
                        dynamic_ncols=True, disable=None, leave=False)

    def round(self, name: str, rnd: int, submodel: str, accuracy: float | None) -> None:
        if name not in self.last:  # a late message of a finished run
            return
        self.bar.update(max(0, rnd - self.last[name]))  # a resumed run counts its old rounds
        self.last[name] = max(self.last[name], rnd)
        acc = "-" if accuracy is None else f"{accuracy:.3f}"
        self.bar.set_postfix_str(f"{name} {submodel} acc {acc}")

    def table(self, method: str, source: str, seconds: float) -> None:
        how = "predicted" if source == "predicted" else "read from plans/"
        self.log(f"  memory table of {method}: {how} ({seconds:.0f} s)")

    def done(self, outcome: _Outcome) -> None:
        self.bar.update(max(0, self.rounds[outcome.name] - self.last.pop(outcome.name)))
        self.finished += 1
        where = f"  {outcome.name} ({self.finished}/{self.total_runs})"
        if outcome.status == "diverged":
            self.log(f"{where}: diverged: {outcome.message}")
        else:
            acc = outcome.final_accuracy
            shown = "-" if acc is None else f"{100 * acc:.1f}%"
            self.log(f"{where}: final accuracy {shown} ({outcome.wall_s:.0f} s)")

    def close(self) -> None:
        self.bar.close()


# Worker-process state, set by _init_worker (spawned processes share nothing with the parent).
_QUEUE: Any = None
_STOP: Any = None
_DATA: dict[tuple[str, str], tuple[ArrayDataset, ArrayDataset]] = {}


def _init_worker(threads: int, queue: Any, stop: Any) -> None:
    """Set up a worker process before any torch work: its CPU threads and the progress queue.

    Ctrl-C is left to the parent, which sets ``stop``: runs then end after their current round.
    """
    global _QUEUE, _STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    load_plugins()  # a spawned process starts with the built-in methods only
    if threads:
        torch.set_num_threads(threads)
    _QUEUE, _STOP = queue, stop


def _work(job: _Job) -> _Outcome:
    """Run one job in a worker process: its data (loaded once per process), then training."""
    def progress(record: RoundRecord) -> None:
        _QUEUE.put((job.name, record.round, record.submodel, record.accuracy))
        if _STOP.is_set():
            raise KeyboardInterrupt

    start = time.perf_counter()
    result = run_training(
        job.config, job.out, resume=job.resume, progress=progress, data=_data(job.config),
        suite=job.suite, target_accuracy=job.target_accuracy, plans=job.plans)
    return _outcome(job.name, result, time.perf_counter() - start)


def _data(config: TrainingConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """The train and test split of ``config``, loaded once per worker process."""
    key = (config.dataset, str(config.data_dir))
    if key not in _DATA:
        _DATA[key] = load_data(config)
    return _DATA[key]


def _plan_work(job: _Job) -> tuple[str, str, float]:
    """Predict (or read) the memory table of ``job``'s method into its suite's ``plans/`` in
    a worker process; return the method, where the table came from and the seconds taken."""
    start = time.perf_counter()
    train, test = _data(job.config)
    spec = model_spec(job.config, train)
    method = make_method(job.config, federated_data(job.config, train, test))
    _, source = shared_table(spec, job.config, method, job.plans)
    return job.config.method, source, time.perf_counter() - start


def plan_jobs(jobs: list[_Job]) -> list[_Job]:
    """One job per distinct memory table of ``jobs`` (runs whose settings differ only in
    seed, partition or label share one), the longest to predict first."""
    first: dict[str, _Job] = {}
    for job in jobs:
        settings = {k: v for k, v in job.config.to_json().items()
                    if k not in ("seed", "partition", "label")}
        first.setdefault(json.dumps(settings, sort_keys=True, default=str), job)
    return sorted(first.values(), key=lambda job: -PLAN_COST_S.get(job.config.method, 1))


def _run_in_workers(jobs: list[_Job], workers: int, threads: int, tracker: _Progress) -> None:
    """Run ``jobs`` in ``workers`` spawned processes, after their memory tables
    (:func:`plan_jobs`, queued first); the first error stops the others after their current
    round and is raised here."""
    context = multiprocessing.get_context("spawn")
    queue, stop = context.Queue(), context.Event()

    def drain() -> None:
        while True:
            try:
                tracker.round(*queue.get_nowait())
            except Empty:
                return

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                             initializer=_init_worker, initargs=(threads, queue, stop)) as pool:
        tables = [pool.submit(_plan_work, job) for job in plan_jobs(jobs)]
        futures = [pool.submit(_work, job) for job in jobs]
        try:
            pending = set(tables) | set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                drain()
                for future in sorted(done, key=[*tables, *futures].index):
                    if future in tables:
                        tracker.table(*future.result())
                    else:
                        tracker.done(future.result())
        except BaseException:
            stop.set()  # running runs end after their round; queued ones never start
            for future in [*tables, *futures]:
                future.cancel()
            raise
        finally:
            drain()


def accuracy_jobs(
    section: AccuracySection, folder: Path, *, resume: bool, suite: str,
    data_dir: Path | None = None, backend: str = "local", devices: Path | None = None,
) -> list[_Job]:
    """The runs of ``section`` still to do, every one checked before any starts (and before
    the data is loaded): its device exists here, the files it names are good
    (:func:`~bench.training.check_inputs`: devices folder, fleet, partition plan) and, with
    ``resume``, a finished run was made with the same settings (:func:`check_finished`) and an
    unfinished one may continue (:func:`check_resume`); a run folder the suite no longer has
    is refused.

    Raises:
        ConfigError: The first run that cannot go on, naming it and the fix.
    """
    runs = section.runs()
    jobs: list[_Job] = []
    names = {run_name(label, part, seed) for label, part, seed in runs}
    if resume and (folder / "runs").is_dir():
        strays = sorted(p.name for p in (folder / "runs").iterdir() if p.name not in names)
        if strays:
            raise ConfigError(f"{folder}: runs/{strays[0]} is not a run of suite {suite} as it "
                              "is now (the suite changed); resume with the suite it was "
                              "started with, or run it into a new --out")
    for label, part, seed in runs:
        name = run_name(label, part, seed)
        config = section.config(label, part, seed, data_dir=data_dir, backend=backend,
                                devices=devices)
        out = folder / "runs" / name
        if resume and (out / "result.json").is_file():
            check_finished(config, out)
            continue
        try:
            check_inputs(config)
        except ConfigError as err:
            raise ConfigError(f"suite {suite}: run {name}: {err}") from None
        if resume:
            check_resume(config, out)
        jobs.append(_Job(name=name, config=config, out=out, resume=resume,
                         suite=suite, target_accuracy=section.target_accuracy,
                         plans=folder / PLANS_DIR))
    return jobs


def run_accuracy(
    section: AccuracySection,
    folder: Path,
    *,
    resume: bool,
    suite: str,
    data_dir: Path | None = None,
    backend: str = "local",
    devices: Path | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> None:
    """Run every (label, partition, seed) of ``section`` into ``folder/runs/``.

    ``section.workers`` runs go at once, each in its own spawned process with
    ``section.torch_threads`` torch threads, the longest first (:func:`schedule`), after the
    pool has predicted each distinct memory table once (1 worker: one after the other in this
    process, in the suite's order, the first run of each table predicting it);
    a run's result does not depend on which process ran it, only on its settings and the
    torch thread count (set ``threads`` to compare runs across ``workers``). With ``resume``,
    runs that hold ``result.json`` are skipped and the others continue from their checkpoints;
    without it, a run folder that already holds rounds is refused. A diverged run is logged
    and the suite goes on.
    """
    runs = section.runs()
    jobs = accuracy_jobs(section, folder, resume=resume, suite=suite, data_dir=data_dir,
                         backend=backend, devices=devices)
    if len(jobs) < len(runs):
        log(f"accuracy: {len(runs) - len(jobs)} of {len(runs)} runs already finished")
    if not jobs:
        return
    workers = section.workers
    if backend != "local" and workers > 1:
        log(f"accuracy: backend {backend}: one run at a time in this process")
        workers = 1
    tracker = _Progress(jobs, len(runs) - len(jobs), len(runs), log)
    try:
        if workers > 1:
            _run_in_workers(schedule(jobs), workers, section.torch_threads, tracker)
        else:
            _run_here(jobs, section.torch_threads, tracker)
    finally:
        tracker.close()


def check_finished(config: TrainingConfig, out: Path) -> None:
    """A finished run's recorded settings (``run.json``, else its ``result.json``) are those
    of ``config``; otherwise resuming the suite would reuse a result of other settings.

    Raises:
        ConfigError: Naming the run folder and each changed setting.
    """
    if (out / RUN_FILE).is_file():
        before = read_run_record(out)["config"]
    else:
        before = read_run_result(out).extra.get("config", {})
    changes = config_changes(before, config.to_json())
    if changes:
        raise ConfigError(f"{out}: finished with other settings ({'; '.join(changes)}); "
                          "resume with the suite it was started with, or run it into a new "
                          "--out")


def _run_here(jobs: list[_Job], threads: int, tracker: _Progress) -> None:
    """Run ``jobs`` one after the other in this process (the data loaded once)."""
    data = load_data(jobs[0].config)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for job in jobs:

            def progress(record: RoundRecord, name: str = job.name) -> None:
                tracker.round(name, record.round, record.submodel, record.accuracy)

            start = time.perf_counter()
            result = run_training(job.config, job.out, resume=job.resume, progress=progress,
                                  data=data, suite=job.suite,
                                  target_accuracy=job.target_accuracy, plans=job.plans)
            tracker.done(_outcome(job.name, result, time.perf_counter() - start))
    finally:
        torch.set_num_threads(before)


def run_suite(
    suite: Suite, folder: Path, *, resume: bool, data_dir: Path | None = None,
    backend: str = "local", devices: Path | None = None,
) -> list[str]:
    """Run every section of ``suite`` into ``folder``; return the text to print.

    ``backend`` (``local``/``ray``, Ray already connected by the caller) is where training
    sections run their clients. ``devices`` (``--devices DIR``) replaces the shipped devices
    folder: the memory section's participation fleets and every training run's.
    """
    if suite.accuracy is not None:  # bad runs fail before the memory section's work
        accuracy_jobs(suite.accuracy, folder, resume=resume, suite=suite.name,
                      data_dir=data_dir, backend=backend, devices=devices)
    if suite.memory is not None:  # so do bad device files (any reference peak checks them)
        fleets_for(1 << 30, devices)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"suite {suite.name} -> {folder}", flush=True)  # before the progress bars
    out: list[str] = []
    if suite.zoo_models:
        table = zoo_table(list(suite.zoo_models), num_classes=10)
        write_zoo(table, folder / "tables")
        out += ["## Model zoo", "", render_zoo(table), ""]
    records: list[Record] = []
    extra: dict[str, object] = {}
    if suite.memory is not None:
        section = suite.memory
        reports = measure_with_progress(section, folder, resume=resume, desc="memory")
        records += memory_records(section, reports, devices)
        extra.update(batch_size=section.batch_size, probe=section.probe,
                     models=list(section.models))
    if suite.accuracy is not None:
        run_accuracy(suite.accuracy, folder, resume=resume, suite=suite.name,
                     data_dir=data_dir, backend=backend, devices=devices)
        for run in run_folders(folder):
            records += read_run_result(run).records
    if suite.speed is not None:
        run_speed(folder, suite.speed.select or None)
    if records:
        extra["suite_wall_s"] = time.perf_counter() - start
        write_result(folder / "result.json", new_result(suite.name, records, repo=CHECKOUT,
                                                        extra=extra))
    out += [build_report(folder)]
    out += ["", f"suite wall time {time.perf_counter() - start:.0f} s"]
    return out
