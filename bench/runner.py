"""Run a suite into a run folder: tables, figures, ``result.json`` and ``report.md``.

A run folder is ``results/runs/<machine>/<utc>_<sha>_<suite>/``. Every measured case is saved
as soon as it is done, so ``--resume`` continues an interrupted run without redoing cases.
"""

from __future__ import annotations

import platform
from pathlib import Path

from bench.commands.models import render as render_zoo
from bench.commands.models import write_zoo, zoo_table
from bench.memory_suite import (
    REPO,
    measure_with_progress,
    memory_records,
    render_memory,
    summary_text,
)
from bench.suites import Suite
from profl_core.errors import ConfigError
from profl_core.results import atomic_write_text, new_result, read_result, run_dir, write_result

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


def run_suite(suite: Suite, folder: Path, *, resume: bool) -> list[str]:
    """Run every section of ``suite`` into ``folder``; return the text to print."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[str] = [f"suite {suite.name} -> {folder}"]
    if suite.zoo_models:
        table = zoo_table(list(suite.zoo_models), num_classes=10)
        write_zoo(table, folder / "tables")
        out += ["", "## Model zoo", "", render_zoo(table)]
    if suite.memory is not None:
        section = suite.memory
        reports = measure_with_progress(section, folder, resume=resume, desc="memory")
        result = new_result(
            suite.name, memory_records(section, reports), repo=REPO,
            extra={"batch_size": section.batch_size, "probe": section.probe,
                   "models": list(section.models)},
        )
        write_result(folder / "result.json", result)
        render_memory(read_result(folder / "result.json"), folder)
        out += ["", f"## Training memory at batch {section.batch_size} ({section.probe} probe)",
                "", summary_text(result)]
    report = "\n".join([f"# {suite.name}", *out[1:]]) + "\n"
    atomic_write_text(folder / "report.md", report)
    return out
