"""The files of a training run folder that other code reads back, and the resume contract.

``rounds.jsonl`` (one record per round: :func:`read_rounds`) and ``result.json``
(:func:`read_run_result`) are read checked, naming the line and field of a bad one.
``run.json`` (:func:`run_record`), written first, records the full resolved configuration and
the code version; resuming is a contract (:func:`check_resume`): a setting that would change
the result is refused, naming it, before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from bench.paths import CHECKOUT
from bench.run_settings import TrainingConfig
from profl_core.files import Fields, fail, read_json, read_jsonl, shown
from profl_core.results import ResultFile, git_state, read_result

#: Settings a resumed run may change: where the data lives, where clients run (the same seed
#: gives the same result on every backend) and how often it checkpoints. Every other setting
#: changes the result, so ``--resume`` refuses a change to it (:func:`check_resume`).
RESUME_FREE: frozenset[str] = frozenset({"data_dir", "backend", "checkpoint_every"})
RUN_FILE = "run.json"
RUN_FORMAT = 1


# ------------------------------------------------------------------------------------ results


ROUNDS_FIX = "restore it, or rerun the training run into a new folder"


def read_rounds(path: Path, *, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The records of a ``rounds.jsonl`` file, each checked for the fields the summaries,
    reports and curves read (none when the file is absent: a run that diverged in its first
    round wrote no record). A torn last line is dropped, and ``warn`` told so.

    Raises:
        ConfigError: A line that is not JSON (but the last, torn one), not an object, or lacks
            a field or has one of the wrong type; the message names the line and the field.
    """
    if not path.is_file() and not path.is_dir():
        return []
    read = read_jsonl(path, "rounds file", missing=ROUNDS_FIX, fix=ROUNDS_FIX)
    if read.torn is not None and warn is not None:
        warn(read.torn)
    return [check_round(record, path, number)
            for number, record in zip(read.lines, read.records, strict=True)]


def check_round(record: Any, path: Path, line: int) -> dict[str, Any]:
    """One ``rounds.jsonl`` record, checked (see :func:`read_rounds`)."""
    row = Fields(record, path, f"line {line}", table="object", fix=ROUNDS_FIX)
    row.integer("round", "use a round number >= 1", minimum=1)
    for key in ("stage", "submodel"):
        row.string(key, empty=True)
    row.integer("step", minimum=0)
    for key in ("accuracy", "loss"):  # null when the round was not evaluated
        if row.get(key, "use a number or null") is not None:
            row.number(key, "use a number or null", finite=False)
    row.number("train_loss", finite=False)
    row.number("eligible_share", minimum=0, maximum=1)
    row.number("wall_s", minimum=0)
    for key in ("participants", "required_bytes"):
        items = row.items(key)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            row.bad(key, "use a list of whole numbers")
    if len(row.data["participants"]) != len(row.data["required_bytes"]):
        row.bad("required_bytes", "use one number per participant")
    if "metrics" in row.data:
        row.mapping("metrics")
    if row.has("step_end"):
        row.string("step_end")
    if "dropped" in row.data:
        row.items("dropped")
    return row.data


def read_run_result(run: Path) -> ResultFile:
    """A training run's ``result.json``, with the parts of ``extra`` the reports and resume
    read checked: ``config`` (an object whose ``method``, ``label``, ``partition`` are strings
    and ``seed`` a whole number), ``status`` and ``diverged``."""
    path = run / "result.json"
    result = read_result(path)
    fix = "regenerate it (rerun the training run into a new folder)"
    extra = Fields(dict(result.extra), path, "extra", table="object", fix=fix)
    if "config" in extra.data:
        config = extra.mapping("config")
        for key in ("method", "label", "partition", "fleet"):
            if key in config.data:
                config.string(key, empty=True)
        if "seed" in config.data:
            config.integer("seed", minimum=0)
    if "status" in extra.data:
        extra.string("status", choices=("completed", "diverged"))
    if "diverged" in extra.data:
        extra.mapping("diverged")
    if extra.has("target_accuracy"):
        extra.number("target_accuracy")
    if "fleet" in extra.data:
        extra.string("fleet", empty=True)
    return result



# ------------------------------------------------------------------------------------ resume


def run_record(config: TrainingConfig) -> dict[str, Any]:
    """What ``run.json`` holds: the full resolved configuration and the code version."""
    git = git_state(CHECKOUT)
    return {"format": RUN_FORMAT, "config": config.to_json(), "code": {
        "git_sha": git["sha"], "git_dirty": git["dirty"], "torch": torch.__version__}}


def read_run_record(out: Path) -> dict[str, Any]:
    """``out/run.json``, checked: ``format``, a ``config`` object and a ``code`` object."""
    path = out / RUN_FILE
    fix = "restore it, or start fresh in a new --out"
    top = Fields(read_json(path, "run file", missing=fix, fix=fix), path, table="object",
                 fix=fix)
    if top.get("format") != RUN_FORMAT:
        top.bad("format", f"this version reads format {RUN_FORMAT}")
    top.mapping("config")
    top.mapping("code")
    return top.data


def config_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``field: before -> now`` for every setting that differs (but :data:`RESUME_FREE`)."""
    keys = [k for k in dict.fromkeys([*before, *now]) if k not in RESUME_FREE]
    return [f"{k} {shown(before.get(k))} -> {shown(now.get(k))}" for k in keys
            if before.get(k) != now.get(k)]


def check_resume(config: TrainingConfig, out: Path, *, required: bool = False,
                 warn: Callable[[str], None] | None = None) -> bool:
    """Whether ``out`` holds a run to continue with ``config``, checked before any work.

    A run folder records its configuration in ``run.json`` when it starts. Resuming is
    refused when a setting that changes the result differs (all but :data:`RESUME_FREE`),
    naming each; a different code version (git commit, torch) is only a warning through
    ``warn``. A folder with nothing in it is no run: with ``required`` (``profl train
    --resume``) that is an error, else (a suite's run that never started) it starts fresh.

    Raises:
        ConfigError: A changed setting, a folder holding files of a run but no ``run.json``
            (started by an older version), or nothing to resume when ``required``.
    """
    record = out / RUN_FILE
    if not record.is_file():
        if out.exists() and not out.is_dir():
            fail(out, "is a file, not a run folder; give the folder of the run to continue")
        started = [n for n in ("rounds.jsonl", "checkpoint.pt", "result.json")
                   if (out / n).exists()]
        if started:
            fail(out, f"holds {started[0]} but no {RUN_FILE}, so its settings are unknown "
                      "(started by an older version); start fresh in a new --out")
        if required:
            fail(out, "nothing to resume (no run was started in this folder); drop --resume "
                      "or give the folder of an interrupted run")
        return False
    saved = read_run_record(out)
    changes = config_changes(saved["config"], config.to_json())
    if changes:
        fail(record, f"--resume would change {'; '.join(changes)}; resume with the "
                     "settings the run was started with, or start fresh in a new --out")
    code, now = saved["code"], run_record(config)["code"]
    moved = [k for k in ("git_sha", "torch") if code.get(k) != now[k]]
    if moved and warn is not None:
        warn(f"{out}: started with {', '.join(f'{k} {code.get(k)}' for k in moved)}, resumed "
             f"with {', '.join(f'{k} {now[k]}' for k in moved)}; the weights may differ "
             "from an uninterrupted run")
    return True

