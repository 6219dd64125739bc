"""A hand-built suite run folder following the training runs' result contract (no training).

Each run is ``runs/<label>-<partition without ':'>-s<seed>/`` with ``result.json`` (label,
method, partition and seed in ``extra["config"]``, ``extra["status"]``) and ``rounds.jsonl``.
A diverged run has ``extra["diverged"]``, no accuracy records and only its finite rounds.
A completed run's ``result.json`` states its :data:`SUITE` number as both its smoothed final
and its last evaluation (the report reads the result file; only a result file without the
smoothed final sends it to ``rounds.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from profl_core.results import Record, ResultFile, write_result

MIB = 1 << 20
ROUNDS = 4
TARGET = 0.6
DIVERGED_ROUND = 3
MESSAGE = "non-finite loss in client 3"

#: Two-sided 95% Student-t quantiles t(0.975, df) from a printed table (not from scipy); df 1
#: and 2 have closed forms, tan(0.475 pi) and 0.95 / sqrt(2 * 0.975 * 0.025).
T975 = {1: 12.706204736174707, 2: 4.302652729911275, 4: 2.7764451051977987}

#: (label, method, partition) -> final accuracy of seeds 0, 1, 2 (None: the seed diverged).
SUITE: dict[tuple[str, str, str], list[float | None]] = {
    ("profl", "profl", "iid"): [0.50, 0.52, 0.54],
    ("fedavg", "fedavg", "iid"): [0.80, 0.81, None],
    ("profl-noshrink", "profl", "iid"): [None, None, None],
    ("profl", "profl", "dirichlet:0.5"): [0.60, 0.62, 0.64],
    ("fedavg", "fedavg", "dirichlet:0.5"): [0.40, 0.41, 0.42],
    ("profl-noshrink", "profl", "dirichlet:0.5"): [0.58, 0.62, 0.66],
}

#: Required bytes per client task and eligible share of each method.
MEMORY = {"profl": (3 * MIB, 0.8), "fedavg": (8 * MIB, 0.1)}


def curve(final: float | None) -> list[float]:
    """Test accuracy per round: best at round 3 (final + 0.02), the last one ``final``; a
    diverged run's finite rounds before it diverged."""
    if final is None:
        return [0.30, 0.45][: DIVERGED_ROUND - 1]
    return [final - 0.30, final - 0.10, final + 0.02, final]


def run_path(folder: Path, label: str, partition: str, seed: int) -> Path:
    return folder / "runs" / f"{label}-{partition.replace(':', '')}-s{seed}"


def write_run(folder: Path, label: str | None, method: str, partition: str,
              seed: int | None, final: float | None) -> Path:
    """One run's folder; ``label``/``seed`` None write an old-style config without them."""
    accuracy = curve(final)
    required, share = MEMORY[method]
    run = run_path(folder, label or method, partition, seed or 0)
    run.mkdir(parents=True)
    lines = [
        json.dumps({"round": i + 1, "stage": "full", "step": 0, "submodel": "full",
                    "accuracy": acc, "loss": 1 - acc, "train_loss": 1.0,
                    "participants": [0, 1], "eligible_share": share,
                    "required_bytes": [required, required], "wall_s": 0.5, "metrics": {},
                    "step_end": None})
        for i, acc in enumerate(accuracy)
    ]
    (run / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    values = {
        "rounds": float(ROUNDS if final is not None else DIVERGED_ROUND),
        "mean_participants": 2.0, "mean_eligible_share": share,
        "max_required_bytes": float(required), "memory_reduction": 1 - required / (8 * MIB),
        "train_wall_s": 2.0,
    }
    config: dict[str, Any] = {"method": method, "partition": partition,
                              "dataset": "synthetic", "model": "cnn", "rounds": ROUNDS}
    if label is not None:
        config["label"] = label
    if seed is not None:
        config["seed"] = seed
    extra: dict[str, Any] = {"config": config, "fleet": "relative-uniform",
                             "target_accuracy": TARGET}
    if final is None:
        extra["status"] = "diverged"
        extra["diverged"] = {"round": DIVERGED_ROUND, "stage": "full", "step": 0,
                             "what": "loss", "message": MESSAGE}
    else:
        extra["status"] = "completed"
        values |= {"final_accuracy": final, "smoothed_final_accuracy": final,
                   "best_accuracy": max(accuracy), "final_loss": 1 - final}
        reached = next((i + 1 for i, a in enumerate(accuracy) if a >= TARGET), None)
        if reached is not None:
            values["rounds_to_target"] = float(reached)
    key = f"{method}/cnn/{partition}/seed{seed}"
    records = tuple(Record(key=key, metric=m, value=v, unit="x") for m, v in values.items())
    write_result(run / "result.json", ResultFile(
        suite="unit", records=records, created_utc="2024-01-01T00:00:00Z", extra=extra))
    return run


def write_suite(folder: Path) -> Path:
    """Every run of :data:`SUITE` into ``folder`` (a label equal to its method is left out of
    the config, as the training runs do)."""
    for (label, method, partition), finals in SUITE.items():
        for seed, final in enumerate(finals):
            write_run(folder, None if label == method else label, method, partition, seed,
                      final)
    return folder
