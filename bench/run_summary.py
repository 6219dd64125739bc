"""What a training run's rounds add up to: its summary records (accuracy, rounds, time,
participation, memory), one entry per method step, and the steps' short labels."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from profl_core.errors import ConfigError
from profl_core.results import Record


def rounds_to_target(rounds: list[dict[str, Any]], target: float) -> int | None:
    """The first round whose test accuracy reaches ``target``; None when none does."""
    return next((int(r["round"]) for r in rounds
                 if r["accuracy"] is not None and r["accuracy"] >= target), None)


#: The smoothed final accuracy averages the evaluations of the last ``FINAL_SHARE`` of a run's
#: rounds, and at least the last ``FINAL_EVALUATIONS`` evaluations.
FINAL_SHARE = 0.1
FINAL_EVALUATIONS = 5


def final_window(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluated rounds the smoothed final accuracy averages.

    With ``R`` the last round run: the evaluations in rounds after ``R - ceil(0.1 * R)`` (the
    last 10% of rounds); when fewer than 5 evaluations fall there, the last 5 evaluations (every
    evaluation of a run with fewer). Empty without an evaluation.
    """
    evaluated = [r for r in rounds if r.get("accuracy") is not None]
    if not evaluated:
        return []
    last = max(int(r["round"]) for r in rounds)
    start = last - math.ceil(FINAL_SHARE * last)
    window = [r for r in evaluated if int(r["round"]) > start]
    return window if len(window) >= FINAL_EVALUATIONS else evaluated[-FINAL_EVALUATIONS:]


def smoothed_final(rounds: list[dict[str, Any]]) -> float:
    """The mean test accuracy over :func:`final_window`; NaN without an evaluation."""
    window = final_window(rounds)
    return sum(float(r["accuracy"]) for r in window) / len(window) if window else math.nan


def summary_records(
    rounds: list[dict[str, Any]],
    key: str,
    *,
    full_bytes: int | None = None,
    target_accuracy: float | None = None,
    completed: bool = True,
) -> list[Record]:
    """Final/best accuracy, loss, rounds, time, participation and memory of one run.

    ``final_accuracy`` and ``final_loss`` are the last evaluation's;
    ``smoothed_final_accuracy`` is the mean over :func:`final_window` and
    ``smoothed_final_evaluations`` how many evaluations that is. A diverged run
    (``completed=False``) gets no accuracy, loss or rounds-to-target records: its last numbers
    describe a model on its way to NaN, not a result.

    Args:
        rounds: The run's ``rounds.jsonl`` records.
        key: Record key of the run.
        full_bytes: The full model's required bytes; adds ``full_peak_bytes`` and
            ``memory_reduction`` (1 - the method's largest required bytes / the full model's).
        target_accuracy: Adds ``rounds_to_target`` when some round reaches it.
    """
    evaluated = [r for r in rounds if r["accuracy"] is not None]
    if completed and not evaluated:
        raise ConfigError(f"{key}: no evaluated round; set eval_every to at most rounds")
    participants = [len(r["participants"]) for r in rounds] or [0]
    peak = max((max(r["required_bytes"], default=0) for r in rounds), default=0)
    out: list[Record] = []
    if completed:
        last = evaluated[-1]
        out += [
            Record(key=key, metric="final_accuracy", value=float(last["accuracy"]),
                   unit="ratio"),
            Record(key=key, metric="best_accuracy",
                   value=float(max(r["accuracy"] for r in evaluated)), unit="ratio"),
            Record(key=key, metric="final_loss", value=float(last["loss"]), unit="nat"),
            Record(key=key, metric="smoothed_final_accuracy", value=smoothed_final(rounds),
                   unit="ratio"),
            Record(key=key, metric="smoothed_final_evaluations",
                   value=float(len(final_window(rounds))), unit="count"),
        ]
    out += [
        Record(key=key, metric="rounds", value=float(len(rounds)), unit="count"),
        Record(key=key, metric="train_wall_s", value=float(sum(r["wall_s"] for r in rounds)),
               unit="s"),
        Record(key=key, metric="mean_participants", value=float(np.mean(participants)),
               unit="count"),
        Record(key=key, metric="mean_eligible_share",
               value=float(np.mean([r["eligible_share"] for r in rounds] or [0.0])),
               unit="ratio"),
        Record(key=key, metric="max_required_bytes", value=float(peak), unit="B"),
    ]
    if full_bytes and rounds:
        out += [
            Record(key=key, metric="full_peak_bytes", value=float(full_bytes), unit="B"),
            Record(key=key, metric="memory_reduction", value=1 - peak / full_bytes,
                   unit="ratio"),
        ]
    if completed and target_accuracy is not None:
        reached = rounds_to_target(rounds, target_accuracy)
        if reached is not None:
            out.append(Record(key=key, metric="rounds_to_target", value=float(reached),
                              unit="count"))
    return out


def step_groups(
    rounds: list[dict[str, Any]],
) -> Iterator[tuple[tuple[str, int, str], list[dict[str, Any]]]]:
    """The rounds of each method step of a run, in order: ``((stage, step, submodel),
    records)`` for every run of consecutive rounds with equal stage, step and sub-model."""
    for key, group in itertools.groupby(
            rounds, key=lambda r: (r["stage"], r["step"], r["submodel"])):
        yield key, list(group)


def step_summary(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per method step (runs of equal stage, step and sub-model) of a run.

    Each entry: ``stage``, ``step``, ``submodel``, ``label`` (:func:`step_label`), ``first`` and
    ``last`` round, ``rounds``, ``end`` (the ``step_end`` reason of its last round; None for a
    step cut by the run's end) and ``accuracy`` (its last evaluated test accuracy). A ProFL
    basic-layer fit also gets ``block_accuracy``: the accuracy at the end of training the real
    block it stands in for (``train B_t`` just before it, whose weights the fit leaves alone),
    so ``accuracy`` vs ``block_accuracy`` is the stand-in against the real block.
    """
    steps: list[dict[str, Any]] = []
    for (stage, step, submodel), records in step_groups(rounds):
        scored = [r["accuracy"] for r in records if r["accuracy"] is not None]
        entry = {
            "stage": stage, "step": step, "submodel": submodel,
            "label": step_label(stage, submodel), "first": records[0]["round"],
            "last": records[-1]["round"], "rounds": len(records),
            "end": records[-1].get("step_end"), "accuracy": scored[-1] if scored else None,
        }
        before = steps[-1] if steps else None
        if submodel.startswith("shrink:") and before is not None \
                and before["submodel"] == f"grow:{step}" and before["stage"] == stage:
            entry["block_accuracy"] = before["accuracy"]
        steps.append(entry)
    return steps


def step_label(stage: str, submodel: str) -> str:
    """A short label for a ProFL phase: ``train B3`` / ``fit basic3`` (shrinking), ``grow B3``."""
    kind, _, step = submodel.partition(":")
    if stage == "shrink":
        return f"fit basic{step}" if kind == "shrink" else f"train B{step}"
    if stage == "grow":
        return f"grow B{step}"
    return submodel

