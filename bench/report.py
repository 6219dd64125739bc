"""A suite run folder's ``report.md``, tables and figures, rebuilt from the folder's files alone.

Inputs (any may be missing): ``result.json`` (the suite's records: memory section plus a copy
of every training run's summary), ``runs/*/result.json`` and ``rounds.jsonl`` (the accuracy
section, read by :mod:`bench.run_frames`), ``tables/model_zoo.md`` and ``speed.md``.
Outputs: ``tables/*.md|csv``, ``figures/*.png`` (:mod:`bench.accuracy_tables`,
:mod:`bench.memory_render`) and ``report.md``. :mod:`bench.run_comparison` puts two run
folders side by side.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.accuracy_tables import accuracy_tables, shown_summary
from bench.comparisons import RULE, answer_lines
from bench.frame_tables import markdown_table
from bench.memory_render import render_memory, summary_text
from bench.run_files import RUN_FILE, read_run_result
from bench.run_frames import has_memory, run_folders, suite_result, target_accuracy
from bench.step_tables import step_section
from profl_core.errors import ConfigError
from profl_core.files import read_text
from profl_core.results import atomic_write_text


def _settings_line(folder: Path, runs: pd.DataFrame) -> str:
    paths = run_folders(folder)
    if not paths:
        return ""
    c = read_run_result(paths[0]).extra.get("config", {})
    keys = ("dataset", "model", "width", "fleet", "clients", "per_round", "rounds",
            "local_epochs", "batch_size", "lr", "samples_per_client", "test_samples",
            "schedule", "device")
    seeds = ", ".join(str(s) for s in sorted(set(runs["seed"])))
    return ", ".join([*(f"{k} {c[k]}" for k in keys if k in c), f"seeds {seeds}"])


def diverged_lines(runs: pd.DataFrame) -> list[str]:
    """``diverged: <label> <partition> seed <s>: <message>`` for every diverged run."""
    bad = runs[runs["status"] == "diverged"]
    return [f"diverged: {r['label']} {r['partition']} seed {r['seed']}: {r['message']}"
            for _, r in bad.iterrows()]


#: Runs named in a note; more are only counted.
NAMES_LISTED = 6


def final_source_lines(runs: pd.DataFrame) -> list[str]:
    """Which runs' ``final_%`` is not their ``result.json``'s smoothed final (a result file
    from before it): computed from ``rounds.jsonl``, or the last evaluation without one."""
    lines = []
    completed = int((runs["status"] == "completed").sum())
    for source, how in (("rounds", "computed from rounds.jsonl (a result.json from before the "
                                   "smoothed final)"),
                        ("last", "the last evaluation (a result.json from before the smoothed "
                                 "final, and no rounds.jsonl)")):
        names = list(runs.loc[runs["final_from"] == source, "run"])
        if not names:
            continue
        who = "every run" if len(names) == completed else \
            f"{len(names)} run{'s' if len(names) > 1 else ''}"
        listed = f": {', '.join(names)}" if len(names) <= NAMES_LISTED else ""
        lines.append(f"`final_%` of {who} is {how}{listed}")
    return lines


def answer_section(summary: pd.DataFrame) -> list[str]:
    """The answer in words (:func:`bench.comparisons.answer_lines`) with how it was made."""
    finals = {(r["label"], r["partition"]): r["final_mean"] for _, r in summary.iterrows()}
    return [RULE, "", *answer_lines(summary, finals)]


LEGEND = (
    "`final_%`: mean test accuracy of the evaluations in the last ceil(10%) of rounds, or of "
    "the last 5 evaluations when fewer fall there; `best_%`/`last_%`: the best/last "
    "evaluation. `a ± b`: mean ± half-width of the 95% Student-t interval over the completed "
    "seeds (the mean alone for one seed); `seeds`: completed/total when some diverged. "
    "`Δ_profl`/`Δ_best`: the label's `final_%` minus `profl`'s / the partition's best label's, "
    "per seed over the seeds both completed, mean ± 95% t half-width in points; "
    "`vs_profl`/`vs_best`: better/worse when that paired t-test, Holm-corrected across the "
    "table's distinct comparisons, rejects at 5%, ~ when it does not (an interval clear of 0 "
    "can still be ~ after the correction), `best` on the best row; `last10_pts`: points the "
    "last 10% of rounds moved the accuracy (under 1: converged within the budget)."
)


def build_report(folder: Path) -> str:
    """Rebuild ``report.md``, ``tables/`` and ``figures/`` of a run folder from its files.

    Returns:
        The text printed to the terminal: the accuracy table with its legend and diverged
        runs, and the memory summary.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    if (folder / RUN_FILE).is_file() or (folder / "rounds.jsonl").is_file():
        raise ConfigError(f"{folder}: a training run's folder (profl train), whose result.json, "
                          "rounds.jsonl and learning_curve.png are its report; give profl "
                          "report a suite run folder (profl bench), e.g. its parent's parent")
    result = suite_result(folder)
    runs, summary, _ = accuracy_tables(folder)
    if runs.empty and result is None and not (folder / "speed.md").is_file():
        raise ConfigError(f"{folder}: no result.json, runs/*/result.json or speed.md; "
                          "is this a run folder?")
    suite = result.suite if result is not None else folder.name.rsplit("_", 1)[-1]
    lines = [f"# Suite `{suite}`", ""]
    if result is not None:
        prov = result.provenance
        git = prov.get("git", {})
        lines += [f"Run {result.created_utc} on {prov.get('machine', '?')} "
                  f"({prov.get('cpu_count', '?')} CPUs, GPU {prov.get('gpu') or 'none'}), "
                  f"torch {prov.get('torch', '?')}, commit {str(git.get('sha', '?'))[:8]}"
                  f"{' (dirty)' if git.get('dirty') else ''}.", ""]
    printed: list[str] = []
    if not runs.empty:
        target = target_accuracy(folder)
        diverged = [f"- {line}" for line in diverged_lines(runs)]
        sources = [f"- {line}" for line in final_source_lines(runs)]
        section = [
            "## Accuracy under the fleet's memory limits", "",
            *answer_section(summary), "",
            f"Settings: {_settings_line(folder, runs)}.", "",
            markdown_table(shown_summary(summary)), "",
            LEGEND, "",
            *([*diverged, ""] if diverged else []),
            *([*sources, ""] if sources else []),
        ]
        lines += [
            *section,
            "![paired differences against profl and the best label]"
            "(figures/paired_differences.png)", "",
            "`last_%` is what `final_%` was before the smoothed final. `rounds`: rounds "
            f"used (diverged runs included). `to_target`: first round with test accuracy >= "
            f"{100 * (target or 0):.0f}%, mean over the seeds that reached it (`-`: none "
            "did). `clients`: clients that trained per round (mean). `eligible_%`: mean share "
            "of the fleet whose budget fits the round's sub-model (`fedavg` is AllLarge, the "
            "upper bound that ignores budgets). `peak_mib`: the largest memory any of the "
            "method's client tasks needed; `saved_%` is against the full model. `extra_fwd`, "
            "`ubatch`: compute cost of the methods on single-device alternatives (`-` for the "
            "others), extra forwards of the model per local step (activation checkpointing "
            "recomputes it) and samples per micro-batch (gradient accumulation), means over "
            "participants and rounds. `wall_s`: "
            "training time of a run. Every run: `tables/accuracy_runs.md`.", "",
            "![accuracy per round, each label beside profl](figures/accuracy_curves.png)", "",
            "![final accuracy against the smallest to the largest client task]"
            "(figures/accuracy_vs_memory.png)", "",
            "![participation per method](figures/participation.png)", "",
        ]
        lines += step_section(folder)
        printed += section
    if has_memory(result):
        assert result is not None
        render_memory(result, folder)
        batch = result.extra.get("batch_size", "?")
        probe = result.extra.get("probe", "?")
        section = [f"## Training memory at batch {batch} ({probe} probe)", "",
                   summary_text(result), "",
                   "![memory breakdown](figures/memory_breakdown.png)", "",
                   "![memory participation](figures/memory_participation.png)", ""]
        lines += section
        printed += [*section[:3], ""]
    zoo = folder / "tables" / "model_zoo.md"
    if zoo.is_file():
        lines += ["#" + read_text(zoo, "model zoo table", missing="rerun the suite"), ""]
    speed = folder / "speed.md"
    if speed.is_file():
        text = read_text(speed, "speed table", missing="rerun the suite").replace(
            "# Speed", "## Speed", 1)
        lines += [text, "Raw numbers: `benchmark.json` (pytest-benchmark).", ""]
        printed += [text]
    atomic_write_text(folder / "report.md", "\n".join(lines).rstrip() + "\n")
    return "\n".join(printed).rstrip()
