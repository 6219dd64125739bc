"""The effective-movement study: ProFL's steps run well past their end, recorded, and EM freeze
rules replayed on them against the plateau oracle (:mod:`bench.plateau`).

A *study run* is ProFL on a suite's accuracy setting with ``schedule="fixed"`` and every step
given ``step_rounds`` rounds (4x the default suite's budget per step by default), evaluated
every round. Besides the usual ``rounds.jsonl`` it keeps, per step, the sampled scalars of the
active block after every round (``trajectories.npz``: ``phase<i>`` is ``(step_rounds + 1) x d``,
row 0 the values before the step), which is all any EM rule looks at. Because EM at a round
uses only the rows up to it, replaying a rule on the first ``n`` rows gives exactly the
decision ProFL would have made after ``n`` rounds of that step (:func:`replay`).

``profl em-study`` runs the study and writes, beside the runs, ``steps.csv`` (per step: the
oracle's plateau round, each rule's end round, EM after its first full window),
``em_study.md`` (that table and how close each rule's ends are to the oracle's) and
``figures/em-<run>.png`` (EM per step with the level, the rule's end and the oracle's round).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tabulate import tabulate
from torch import Tensor

from bench.plateau import plateau_round
from bench.plots import EmPanel, em_figure
from bench.run_files import read_rounds, run_record
from bench.run_settings import TrainingConfig, method_config, run_config
from bench.run_summary import step_groups, step_label
from bench.training import (
    federated_data,
    load_data,
    make_fleet,
    memory_table,
    model_spec,
    reference_bytes,
)
from profl_core.files import atomic_write_text
from profl_core.fl import JsonlSink, run_federated
from profl_core.fl.types import ClientUpdate, ServerState
from profl_core.methods.effective_movement import FreezeRule, em_series
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.methods.profl_steps import structure_of
from profl_core.models import build_model

TRAJECTORIES = "trajectories.npz"

#: The authors' published values (profl-paper.md §1.6) read as this suite's rule, no level.
AUTHORS_RULE = FreezeRule(window=20, evaluation_number=15, slope_threshold=0.2, em_level=1.0)


class RecordingProFL(ProFL):
    """ProFL that also appends the active block's sampled scalars after every round to
    ``rows[phase]`` (in-process runs only: the study's local backend)."""

    def __init__(self, config: ProFLConfig, rows: dict[int, list[Tensor]]) -> None:
        super().__init__(config)
        self.rows = rows

    def aggregate(self, rnd: int, state: ServerState,
                  updates: Sequence[ClientUpdate]) -> ServerState:
        index = int(state.meta["phase"])
        if index not in self.rows:
            self.rows[index] = [state.meta["em_trajectory"][0].clone()]
        new = super().aggregate(rnd, state, updates)
        structure = structure_of(new)
        vector = structure.active_vector(new.weights, structure.phases[index])
        self.rows[index].append(vector[state.meta["em_indices"]].clone())
        return new


def study_config(base: TrainingConfig, step_rounds: int, **options: Any) -> TrainingConfig:
    """``base`` as a study run: fixed schedule, ``step_rounds`` per step, every round evaluated
    (``rounds`` is set to cover every step when the run starts)."""
    merged = {**dict(base.options), **options, "schedule": "fixed", "max_rounds": step_rounds}
    return replace(base, method="profl", label="profl-study", eval_every=1,
                   checkpoint_every=0, rounds=step_rounds, options=merged)


def run_study(config: TrainingConfig, out: Path, *, phases: int | None = None) -> Path:
    """One study run into ``out``: ``run.json``, ``rounds.jsonl``, ``trajectories.npz`` (written
    last: it marks a finished run); only the first ``phases`` steps when given (the shrinking
    stage alone: ``2 * T - 2``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "rounds.jsonl").unlink(missing_ok=True)  # an unfinished run starts over
    train, test = load_data(config)
    spec = model_spec(config, train)
    fed = federated_data(config, train, test)
    model = build_model(spec, generator=torch.Generator().manual_seed(config.seed))
    probe = ProFL(method_config(config)).init_state(model, np.random.default_rng(0))
    steps, step_rounds = len(structure_of(probe).phases), int(config.options["max_rounds"])
    config = replace(config, rounds=step_rounds * steps)  # so every step gets step_rounds
    rows: dict[int, list[Tensor]] = {}
    method = RecordingProFL(method_config(config), rows)
    table = memory_table(spec, config, method)
    fleet = make_fleet(config, reference_bytes(spec, config))
    atomic_write_text(out / "run.json", json.dumps(run_record(config), indent=1) + "\n")
    loop = replace(run_config(config), rounds=step_rounds * (phases or steps))
    run_federated(method, fleet, fed, loop, model=model, memory_table=table,
                  sink=JsonlSink(out / "rounds.jsonl"), backend="local")
    np.savez_compressed(out / TRAJECTORIES, **{
        f"phase{i}": torch.stack(r).numpy() for i, r in sorted(rows.items())})
    return out


# ------------------------------------------------------------------------------- replaying


def replay(rule: FreezeRule, rows: np.ndarray) -> int | None:
    """The step round after which ``rule`` ends the step (None: not within ``rows``)."""
    traj = np.asarray(rows, dtype=np.float64)
    for n in range(1, traj.shape[0]):
        if rule.decide(traj[: n + 1], n, max_rounds=math.inf) == "em":  # type: ignore[arg-type]
            return n
    return None


@dataclass(frozen=True)
class StepTrace:
    """One step of a study run: its place, per-round test accuracy and logged rows."""

    run: str
    index: int
    stage: str
    submodel: str
    accuracy: np.ndarray
    rows: np.ndarray

    @property
    def label(self) -> str:
        """``train B3``, ``fit basic3``, ``grow B3``."""
        return step_label(self.stage, self.submodel)


def read_study(folder: Path) -> list[StepTrace]:
    """Every step of every finished study run under ``folder``."""
    steps: list[StepTrace] = []
    for npz in sorted(folder.rglob(TRAJECTORIES)):
        groups = step_groups(read_rounds(npz.parent / "rounds.jsonl"))
        with np.load(npz) as data:
            for i, ((stage, _, submodel), records) in enumerate(groups):
                acc = np.array([r["accuracy"] for r in records], dtype=float)
                steps.append(StepTrace(run=str(npz.parent.relative_to(folder)), index=i,
                                       stage=stage, submodel=submodel, accuracy=acc,
                                       rows=data[f"phase{i}"]))
    return steps


def step_table(steps: Sequence[StepTrace], rules: Mapping[str, FreezeRule]) -> pd.DataFrame:
    """Per step that EM may end (every step of a run but its last): the oracle's plateau round
    and, per rule, the round it ends the step (NaN: not within the recorded rounds) and its EM
    after its first full window."""
    lasts = {run: max(s.index for s in steps if s.run == run) for run in {s.run for s in steps}}
    out: list[dict[str, Any]] = []
    for s in steps:
        if s.index == lasts[s.run]:
            continue
        row: dict[str, Any] = {"run": s.run, "step": s.label, "rounds": s.accuracy.size,
                               "oracle": plateau_round(s.accuracy)}
        for name, rule in rules.items():
            end = replay(rule, s.rows)
            row[f"end:{name}"] = math.nan if end is None else end
            series = em_series(s.rows, rule.window)
            row[f"em0:{name}"] = float(series[0]) if series.size else math.nan
        out.append(row)
    return pd.DataFrame(out)


def agreement(frame: pd.DataFrame, rule: str, tolerance: float = 0.25) -> dict[str, float]:
    """How ``rule``'s ends compare with the oracle's rounds: the share within ``tolerance``
    (relative), the median end/oracle ratio, the share ended at the rule's earliest round,
    the share never ended, and the standard deviation of the end rounds."""
    end, oracle = frame[f"end:{rule}"], frame["oracle"]
    earliest = end.min()
    return {
        "within": float(((end - oracle).abs() <= tolerance * oracle).mean()),
        "median_ratio": float((end / oracle).median()),
        "at_earliest": float((end == earliest).mean()),
        "never": float(end.isna().mean()),
        "end_sd": float(end.std()),
    }


def write_report(folder: Path, rules: Mapping[str, FreezeRule], shown: str) -> str:
    """``steps.csv``, ``em_study.md`` and one figure per run (EM of ``rules[shown]``) under
    ``folder``; returns the table of how each rule's ends compare with the oracle's."""
    steps = read_study(folder)
    frame = step_table(steps, rules)
    frame.to_csv(folder / "steps.csv", index=False)
    lines = [f"# EM study: {len({s.run for s in steps})} runs, {len(frame)} steps EM may end",
             "", "Oracle: the first round whose 5-round centred mean test accuracy has made 90% "
             "of the step's gain (start to the median of its last quarter); bench/plateau.py.",
             ""]
    summary = [{"rule": name, "H": r.window, "E": r.evaluation_number,
                "slope": r.slope_threshold, "level": round(r.em_level, 3),
                **agreement(frame, name)} for name, r in rules.items()]
    agreement_table = tabulate(summary, headers="keys", tablefmt="github", floatfmt=".2f")
    lines += [agreement_table, "",
              tabulate(frame, headers="keys", tablefmt="github", floatfmt=".2f",
                       showindex=False), ""]
    figures = folder / "figures"
    rule = rules[shown]
    known = dict(zip(zip(frame["run"], frame["step"], strict=True),
                     zip(frame[f"end:{shown}"], frame["oracle"], strict=True), strict=True))
    for run in sorted({s.run for s in steps}):
        panels = []
        for s in (s for s in steps if s.run == run):
            values = em_series(s.rows, rule.window)
            em = np.concatenate([np.full(rule.window - 1, np.nan), values])[: s.accuracy.size]
            end, oracle = known.get((s.run, s.label), (math.nan, plateau_round(s.accuracy)))
            ended = not math.isnan(end)  # the last step (not in the table) is never EM's
            panels.append(EmPanel(label=s.label, rounds=np.arange(1, s.accuracy.size + 1),
                                  em=em, level=rule.em_level,
                                  end_round=int(end) if ended else None,
                                  end_reason="em" if ended else None,
                                  oracle_round=int(oracle)))
        em_figure(panels, figures / f"em-{run.replace('/', '-')}.png",
                  f"EM ({shown}: H={rule.window}, E={rule.evaluation_number}) vs the "
                  f"oracle, {run}")
    atomic_write_text(folder / "em_study.md", "\n".join(lines))
    return agreement_table
