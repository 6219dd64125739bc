"""``profl plan`` and ``--partition-plan``: plan a ProFL partition, show it, write and read it.

A plan file is the JSON that ``profl plan --json`` prints (and ``--out`` writes): the model
spec with its planned ``blocks``, how it was measured (batch size, probe, threads), the full
model's bytes (``full_bytes``: required bytes, the number selection uses; ``full_tensor_bytes``),
the largest step's (``peak_bytes``, ``peak_tensor_bytes``), every ProFL step's and the same for
the model's own stage partition (``stage``). With a fleet, every step also has
``fleet_share``: the fraction of the fleet's devices whose budget fits it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from bench.paths import fleet_path, profiles_dir
from bench.report_cache import ReportCache
from profl_core.devices import Fleet, load_fleet, load_profiles
from profl_core.files import Fields, read_json
from profl_core.memory import MemoryReport, TrainingCase, measure
from profl_core.memory.plan import Objective, Plan, plan_partition, stage_plan
from profl_core.models import ModelSpec

#: The plan file's schema name.
PLAN_SCHEMA = "profl-partition-plan/1"
#: Threads of the predict probe while planning: the gate's count, so plans are comparable.
PLAN_THREADS = 1
MIB = float(1 << 20)


def make_plan(spec: ModelSpec, *, batch_size: int, max_blocks: int, probe: str = "predict",
              objective: Objective = "required",
              cache: ReportCache | None = None) -> tuple[Plan, Plan]:
    """The planned partition and the model's stage partition, both measured with ``probe``
    (answered from ``cache`` where it holds the case: :mod:`bench.report_cache`); progress on
    stderr (:class:`PlanProgress`)."""
    with PlanProgress(spec.name, cache=cache) as progress:

        def probe_case(case: TrainingCase) -> MemoryReport:
            report = measure(case, probe=probe, threads=PLAN_THREADS)
            progress.measured(case.label)
            return report

        measure_case = probe_case if cache is None else cache.wrap(probe_case)
        stage = stage_plan(spec, batch_size=batch_size, measure=measure_case)
        planned = plan_partition(spec, batch_size=batch_size, measure=measure_case,
                                 max_blocks=max_blocks, objective=objective,
                                 progress=progress.search)
    return planned, stage


class PlanProgress:
    """The planner's progress on stderr: each search's block steps out of its bound (the
    steps of its blocks not measured in an earlier search, narrowed to the blocks within the
    least largest cost once the search knows it; steps that cannot change the plan are
    skipped, so a search may end below it; at most ``1 + refinements`` searches), the
    steps measured (and, with a cache, the steps it answered), the time spent and the search's
    ETA (at most). A tqdm bar on a terminal; otherwise one line every ``every`` seconds (and
    when a search starts), for logs and CI.
    """

    def __init__(self, name: str, *, every: float = 5.0, stream: TextIO | None = None,
                 cache: ReportCache | None = None) -> None:
        self.name = name
        self.cache = cache
        self.every = every
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.bar: tqdm[Any] | None = None
        self.steps = 0
        self.where = "stage partition"
        self.start = self.search_start = self.last_line = time.monotonic()
        self.done = self.total = 0
        self.current = 0  # the search being told about (0: none yet)

    def __enter__(self) -> PlanProgress:
        if self.tty:
            self.bar = tqdm(desc=f"plan {self.name}: {self.where}", unit=" block steps",
                            leave=False, file=self.stream, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def measured(self, label: str) -> None:
        """One more step measured (``label``: its case)."""
        self.steps += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.steps} steps measured, {label}", refresh=False)
            self.bar.refresh()
        else:
            self._line()

    def search(self, search: int, searches: int, done: int, total: int) -> None:
        """:data:`~profl_core.memory.plan.Progress`: block step ``done`` of at most
        ``total`` (a total that may shrink within a search)."""
        now = time.monotonic()
        started = search != self.current
        if started:
            self.current = search
            self.where = f"search {search} of at most {searches}"
            self.search_start = now
        self.done, self.total = done, total
        if self.bar is not None:
            if started:
                self.bar.reset(total=total)
                self.bar.set_description_str(f"plan {self.name}: {self.where}")
            else:
                self.bar.total = total
                self.bar.update(done - self.bar.n)
        else:
            self._line(force=started)

    def _line(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_line < self.every:
            return
        self.last_line = now
        text = f"plan {self.name}: {self.where}"
        if self.where != "stage partition":
            text += f", {self.done}/{self.total} block steps at most"
        text += f", {self.steps} steps measured"
        if self.cache is not None and self.cache.hits:
            text += f", {self.cache.hits} from the cache"
        text += f", {_clock(now - self.start)} elapsed"
        if 0 < self.done < self.total:
            rate = (now - self.search_start) / self.done
            text += f", search ETA {_clock(rate * (self.total - self.done))} at most"
        print(text, file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def plan_fleet(fleet: str, reference_bytes: int, devices: Path | None) -> Fleet:
    """The fleet named or given by path, relative fleets scaled to ``reference_bytes`` (the
    full model's required bytes, as for every method)."""
    profiles = load_profiles(profiles_dir(devices))
    return load_fleet(fleet_path(fleet, devices), profiles, reference_peak_bytes=reference_bytes)


def _share(fleet: Fleet | None, nbytes: int) -> float | None:
    return None if fleet is None else float(np.mean(fleet.budgets_bytes() >= nbytes))


def _steps(plan: Plan, fleet: Fleet | None) -> list[dict[str, Any]]:
    return [{"case": s.case, "peak_bytes": s.required_bytes,
             "tensor_peak_bytes": s.tensor_peak_bytes,
             **({} if fleet is None else {"fleet_share": _share(fleet, s.required_bytes)})}
            for s in plan.steps]


def plan_record(planned: Plan, stage: Plan, *, batch_size: int, probe: str, max_blocks: int,
                objective: str, fleet: Fleet | None) -> dict[str, Any]:
    """The plan file's content (see the module doc)."""
    return {
        "schema": PLAN_SCHEMA,
        "model": asdict(planned.spec),
        "blocks": list(planned.groups),
        "units": list(planned.units),
        "batch_size": batch_size,
        "probe": probe,
        "threads": PLAN_THREADS,
        "max_blocks": max_blocks,
        "objective": objective,
        "full_bytes": planned.full_required_bytes,
        "full_tensor_bytes": planned.full_tensor_bytes,
        "peak_bytes": planned.peak_bytes,
        "peak_tensor_bytes": planned.peak_tensor_bytes,
        "steps": _steps(planned, fleet),
        "fleet": None if fleet is None else fleet.name,
        "stage": {"blocks": list(stage.groups), "peak_bytes": stage.peak_bytes,
                  "peak_tensor_bytes": stage.peak_tensor_bytes, "steps": _steps(stage, fleet)},
    }


def render_plan(record: dict[str, Any]) -> str:
    """The plan as text: the partition, every step's peaks (and fleet share), the summary."""
    lines = [f"{record['model']['name']} at batch {record['batch_size']}, probe "
             f"{record['probe']}: {len(record['blocks']) - 1} blocks (stages: "
             f"{len(record['stage']['blocks']) - 1})", ""]
    lines += [f"  block{i}: {group}" for i, group in enumerate(record["blocks"][:-1], start=1)]
    rows = []
    stage_steps = {s["case"]: s for s in record["stage"]["steps"]}
    for step in record["steps"]:
        row = {"step": step["case"], "required MiB": f"{step['peak_bytes'] / MIB:.1f}",
               "tensor MiB": f"{step['tensor_peak_bytes'] / MIB:.1f}"}
        if "fleet_share" in step:
            row["fleet %"] = f"{100 * step['fleet_share']:.0f}"
        old = stage_steps.get(step["case"])
        row["stage partition MiB"] = "" if old is None else f"{old['peak_bytes'] / MIB:.1f}"
        rows.append(row)
    lines += ["", tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True), ""]
    full, full_t = record["full_bytes"], record["full_tensor_bytes"]
    for label, part in (("planned", record), ("stages", record["stage"])):
        lines.append(f"{label:8s} largest step {part['peak_bytes'] / MIB:.1f} MiB required "
                     f"({part['peak_bytes'] / full:.2f}x full), tensor "
                     f"{part['peak_tensor_bytes'] / MIB:.1f} MiB "
                     f"({part['peak_tensor_bytes'] / full_t:.2f}x full)")
    lines.append(f"full model {full / MIB:.1f} MiB required, tensor {full_t / MIB:.1f} MiB")
    return "\n".join(lines)


def read_plan(path: Path, model: str) -> tuple[tuple[str, ...], bool]:
    """The planned block groups of a plan file, for a run training ``model``, and whether it
    was planned with identity stand-ins.

    Raises:
        ConfigError: naming the file and field: not a plan, or a plan of another model.
    """
    fix = f"make it with `profl plan --model {model} --out {path}`"
    fields = Fields(read_json(path, "partition plan", missing=fix, fix=fix), path,
                    table="object", fix=fix)
    if fields.get("schema", "missing") != PLAN_SCHEMA:
        fields.bad("schema", f"use {PLAN_SCHEMA!r} (a file written by profl plan)")
    spec = fields.mapping("model")
    planned = spec.string("name")
    if planned != model:
        spec.bad("name", f"the plan is for {planned!r} but the run trains {model!r}; plan "
                         f"{model} or train {planned}")
    groups = fields.items("blocks", "use a list of block groups", nonempty=True)
    if len(groups) < 3 or not all(isinstance(g, str) and g for g in groups):
        fields.bad("blocks", "use a list of at least three block-group strings, the last the "
                             "head")
    return tuple(groups), spec.has("identity_standins") and spec.boolean("identity_standins")
