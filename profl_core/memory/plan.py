"""A budget-aware partition planner for ProFL (``profl plan``; issue 14, DESIGN §3).

ProFL trains one block at a time, so its largest step's peak is what decides which devices
can take part. The model's stages are one partition; this module chooses the block boundaries
at the granularity of the model's *layers* instead, to make the largest step's peak as small
as possible with at most ``max_blocks`` blocks.

Layers and partitions (:mod:`profl_core.memory.plan_units`): the children of every block of the
model, cut so that a unit starts at each weight layer; a partition is an ordinary
:class:`~profl_core.models.ModelSpec` with ``blocks`` set, so ProFL trains on it like on any
model and its output modules are the generic stand-ins.

The search (:func:`plan_partition`). The cost of a block made of units ``[i, j)`` is the
largest ``required_bytes`` (the number selection uses; heap when the probe models it) of the
two ProFL steps that train it: ``grow`` (prefix frozen, the block and its output module
trainable) and, unless it is the first block, ``shrink`` (the fit of its stand-in, teacher and
student both held). It is measured by the probe on a partition of ``[0, i)`` (the frozen prefix
as one block), ``[i, j)`` and the blocks after it. The output module holds one stand-in per
later block, and a stand-in for a block that keeps the resolution costs as much activation
memory as a layer there, so the later blocks matter: the first search takes the rest as one
block, and each refinement takes the cuts the previous search put after ``j``, until the
partition repeats (at most ``refinements`` times); the best measured partition wins. Each
search is a dynamic programme over the boundaries that minimises the largest block cost, then
(among partitions with that largest cost) the sum of the block costs, then the number of
blocks. Every searched partition is measured exactly (every ``grow:t`` and ``shrink:t`` case)
and those are the peaks reported. A search measures only the steps its answer can depend on
(:func:`_search`): a block starts with a lower bound of its ``grow`` step, which costs a forward
on fake tensors instead of a step (:class:`~profl_core.memory.plan_bound.GrowBound`), and the
programmes measure the blocks of the partitions they choose until the chosen one is exact;
no estimate is above its block's cost, so the boundaries are the ones every cost would give.
A case met twice in one planning run is measured once (:func:`measure_once`), a block's steps
once per ``(i, j, later cuts)``, and a cut is not built to learn that its ``shrink`` steps
have a stand-in to fit (:func:`~profl_core.memory.case.fitted_steps`). With a fleet, the
objective is the share of devices that fit every step: it is a decreasing step function of the
largest peak, so the same partition maximises it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from profl_core.errors import ConfigError
from profl_core.memory.case import TrainingCase, all_cases, fitted_steps
from profl_core.memory.case_text import case_from_text
from profl_core.memory.plan_bound import GrowBound
from profl_core.memory.plan_units import (
    Unit,
    block_units,
    head_group,
    join,
    layer_units,
    partition_spec,
)
from profl_core.memory.report import MemoryReport
from profl_core.models import MODEL_NAMES, ModelSpec, build_model

Measure = Callable[[TrainingCase], MemoryReport]
#: ``progress(search, searches, done, total)``: search ``search`` (1-based, at most
#: ``searches``) has measured ``done`` of the at most ``total`` block steps it may need (a
#: total that may shrink as the search learns which blocks it needs).
Progress = Callable[[int, int, int, int], None]
Objective = Literal["required", "tensor"]
#: A block ``[i, j)`` of a partition whose later cuts are ``rest``: ``(i, j, rest)``.
Key = tuple[int, int, tuple[int, ...]]
OBJECTIVES: tuple[str, ...] = ("required", "tensor")


@dataclass(frozen=True, kw_only=True)
class StepPeak:
    """One ProFL step of a partition and what it needs.

    Attributes:
        case: the case label (``grow:2``, ``shrink:3``).
        tensor_peak_bytes: live-tensor peak.
        required_bytes: what selection compares with a device's budget.
    """

    case: str
    tensor_peak_bytes: int
    required_bytes: int


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A planned partition, its steps' peaks and the full model's.

    Attributes:
        spec: the partitioned model spec (``blocks`` = the groups, the head last; empty for a
            zoo model's own stages).
        groups: the block groups, the head's last.
        bounds: unit indices where a new block starts.
        units: every layer unit's group text.
        steps: every ProFL step in training order (shrinking ``shrink:T..2``, then growing).
        full_tensor_bytes: tensor peak of the full model's step.
        full_required_bytes: required bytes of the full model's step.
    """

    spec: ModelSpec
    groups: tuple[str, ...]
    bounds: tuple[int, ...]
    units: tuple[str, ...]
    steps: tuple[StepPeak, ...]
    full_tensor_bytes: int
    full_required_bytes: int

    @property
    def peak_bytes(self) -> int:
        """The largest step's required bytes."""
        return max(s.required_bytes for s in self.steps)

    @property
    def peak_tensor_bytes(self) -> int:
        """The largest step's tensor peak."""
        return max(s.tensor_peak_bytes for s in self.steps)


Cost = Callable[[int, int], int]


def least_max(cost: Cost, count: int, max_blocks: int) -> tuple[int, tuple[int, ...]]:
    """The least largest ``cost(i, j)`` of partitions of ``count`` units into 2..``max_blocks``
    blocks ``[i, j)``, and the boundaries of one partition that reaches it (a dynamic
    programme over (blocks, end unit))."""
    if count < 2:
        raise ConfigError(f"the model has {count} layer unit(s); a partition needs at least 2")
    # best[(k, j)]: (largest cost, cuts) of k blocks covering units [0, j)
    best: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {
        (1, j): (cost(0, j), ()) for j in range(1, count)}  # a first block never ends the model
    for k in range(2, max_blocks + 1):
        for j in range(k, count + 1):
            best[(k, j)] = min((max(best[(k - 1, i)][0], cost(i, j)), (*best[(k - 1, i)][1], i))
                               for i in range(k - 1, j))
    value, _, cuts = min((best[(k, count)][0], k, best[(k, count)][1])
                         for k in range(2, min(max_blocks, count) + 1))
    return value, cuts


def least_sum(cost: Cost, count: int, max_blocks: int, limit: int) -> tuple[int, ...]:
    """The boundaries of the partition (as in :func:`least_max`) with every block's cost at
    most ``limit`` that is least by (sum of costs, blocks, boundaries); one must exist."""
    best: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
    for j in range(1, count):
        if (c := cost(0, j)) <= limit:
            best[(1, j)] = (c, ())
    for k in range(2, max_blocks + 1):
        for j in range(k, count + 1):
            options = [(best[(k - 1, i)][0] + c, (*best[(k - 1, i)][1], i))
                       for i in range(k - 1, j)
                       if (k - 1, i) in best and (c := cost(i, j)) <= limit]
            if options:
                best[(k, j)] = min(options)
    return min((best[(k, count)][0], k, best[(k, count)][1])
               for k in range(2, max_blocks + 1) if (k, count) in best)[2]


def _best_bounds(cost: Cost, count: int, max_blocks: int) -> tuple[int, ...]:
    """Boundaries of 2..``max_blocks`` blocks ``[i, j)`` over ``count`` units that minimise
    the largest ``cost(i, j)``; among those, the smallest sum of costs (more of the fleet in
    the other steps), then the fewest blocks (then the first boundaries)."""
    return least_sum(cost, count, max_blocks, least_max(cost, count, max_blocks)[0])


def plan_partition(
    spec: ModelSpec, *, batch_size: int, measure: Measure, max_blocks: int = 8,
    refinements: int = 3, objective: Objective = "required", bound: bool = True,
    progress: Progress | None = None,
) -> Plan:
    """The partition of ``spec`` into at most ``max_blocks`` blocks whose largest ProFL step
    needs the least memory (see the module doc), measured with ``measure``.

    Args:
        spec: a zoo, torchvision or user model (its ``blocks`` are ignored for zoo models: the
            units come from the model's stages).
        batch_size: the step's batch size.
        measure: the probe, ``case -> MemoryReport`` (e.g. ``predict``).
        max_blocks: the most blocks (ProFL then runs ``2 * blocks - 1`` steps).
        refinements: searches after the first, each costing a block with the stand-ins of the
            blocks the previous search put after it; stops early when the partition repeats.
        objective: the peak to minimise: ``"required"`` (what selection compares with a
            budget: the heap peak where the probe models it) or ``"tensor"`` (live tensors).
        bound: a block's ``grow`` step is bounded from below by
            :class:`~profl_core.memory.plan_bound.GrowBound` until the search needs it: its
            peaks must then be at least the step's live tensor bytes (the ``dispatch``,
            ``predict``, ``heap`` and ``cuda`` probes' are). False: every block's ``grow``
            step is measured (the bound is its ``grow`` step).
        progress: told when a search starts and after every block step it measures (see
            :data:`Progress`); a search's total counts the steps of its blocks not already
            measured, and shrinks once the search knows the least largest cost (a block
            above it needs no more steps).

    A case is measured once per call: a case met again (the same spec, step and options) reuses
    the first report, so ``measure`` must be deterministic (every probe is).

    Raises:
        ConfigError: a model whose blocks are not sequential, or ``max_blocks < 2``.
    """
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 2:
        raise ConfigError(f"max_blocks={max_blocks!r}; use 2 or more")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective!r}; use one of {', '.join(OBJECTIVES)}")
    base = replace(spec, blocks=()) if spec.name in MODEL_NAMES else spec
    model = build_model(base)
    units, head = layer_units(model), head_group(model)
    n = len(units)
    measure = measure_once(measure)
    searches = 1 + max(0, refinements)
    steps = _BlockSteps(base, units, head, batch_size=batch_size, measure=measure,
                        objective=objective)
    lower: Callable[[Key], int] = steps.grow
    if bound and n >= 2:
        lower = GrowBound(base, units, head, case=case_from_text(
            steps.cut((1, 2, ())), "grow:2", batch_size=batch_size))
    later: tuple[int, ...] = ()  # the previous search's cuts; none at first
    best: Plan | None = None
    for search in range(1, searches + 1):
        keys = {(i, j): (i, j, tuple(b for b in later if b > j)) for i, j in _searched_blocks(n)}
        steps.start(search, searches, sum(steps.bound(key) for key in keys.values()), progress)
        bounds = _search(steps, keys, n, min(max_blocks, n), lower)
        plan = exact_plan(base, units, bounds, batch_size=batch_size, measure=measure,
                          head=head)
        if best is None or _rank(plan, objective) < _rank(best, objective):
            best = plan
        if bounds == later:
            break
        later = bounds
    assert best is not None
    return best


def _search(steps: _BlockSteps, keys: dict[tuple[int, int], Key], count: int, max_blocks: int,
            lower: Callable[[Key], int]) -> tuple[int, ...]:
    """:func:`_best_bounds` over the block costs of ``keys`` (``(i, j)`` -> the key of
    :class:`_BlockSteps`), measuring only the steps of blocks that can be in its answer.

    A block's *estimate* is its cost once both its steps are measured, its ``grow`` step
    once that is measured, else ``lower(key)``: never above its cost.

    1. :func:`least_max` over the estimates, until its partition's blocks are all exact: its
       value is then the least largest cost ``M`` (no partition's estimate is above its
       cost, and that one's is its cost). Each round measures the next step (``grow``, then
       ``shrink``) of every inexact block of its partition.
    2. :func:`least_sum` with the limit ``M`` over the estimates, the same way. Its answer is
       the one of every cost: a block whose estimate is above ``M`` is above it in every
       cost, a partition all of whose blocks are at most ``M`` has them at most ``M`` in the
       estimates, and the answer, exact, is least by (sum, blocks, boundaries) among them
       while no partition's estimated sum is above its sum.
    """
    estimates: dict[tuple[int, int], int] = {}

    def estimate(i: int, j: int) -> int:
        key = keys[(i, j)]
        known = steps.known(key)
        if known is not None:
            return known
        if (i, j) not in estimates:
            estimates[(i, j)] = lower(key)
        return estimates[(i, j)]

    def settle(cuts: tuple[int, ...]) -> bool:
        """Measure the next step of every inexact block of the partition; False when none."""
        inexact = [keys[b] for b in itertools.pairwise([0, *cuts, count])
                   if not steps.exact(keys[b])]
        for key in inexact:
            steps.next_step(key)
        return bool(inexact)

    value, cuts = least_max(estimate, count, max_blocks)
    while settle(cuts):
        value, cuts = least_max(estimate, count, max_blocks)
    steps.narrow(sum(steps.bound(key) for ij, key in keys.items() if estimate(*ij) <= value))
    cuts = least_sum(estimate, count, max_blocks, value)
    while settle(cuts):
        cuts = least_sum(estimate, count, max_blocks, value)
    return cuts


class _BlockSteps:
    """The ProFL steps that cost a block ``[i, j)`` with the later cuts ``rest`` (a key
    ``(i, j, rest)``), measured at most once per planning run: its ``grow:t`` step (``t`` = 1
    for the first block, else 2: the prefix ``[0, i)`` is one frozen block) and, when its
    stand-in has a basic layer to fit, its ``shrink:t`` step; the block's cost is the larger.
    Tells ``progress`` after every step it measures, with the search's total (:meth:`start`,
    :meth:`narrow`)."""

    def __init__(self, base: ModelSpec, units: Sequence[Unit], head: str, *, batch_size: int,
                 measure: Measure, objective: Objective) -> None:
        self.base, self.units, self.head = base, units, head
        self.batch_size, self.measure, self.objective = batch_size, measure, objective
        self.peaks: dict[tuple[Key, str], int] = {}
        self.labels: dict[Key, list[str]] = {}
        self.progress: Progress | None = None
        self.search = self.searches = self.done = self.total = 0

    def start(self, search: int, searches: int, total: int, progress: Progress | None) -> None:
        """A search starts: ``total`` steps at most to measure."""
        self.search, self.searches, self.done, self.total = search, searches, 0, total
        self.progress = progress
        self._tell()

    def narrow(self, remaining: int) -> None:
        """The search needs at most ``remaining`` more steps."""
        self.total = self.done + remaining
        self._tell()

    def _tell(self) -> None:
        if self.progress is not None:
            self.progress(self.search, self.searches, self.done, self.total)

    def cut(self, key: Key) -> ModelSpec:
        """The partition that holds the block: ``[0, i)``, ``[i, j)`` and the later blocks."""
        i, j, rest = key
        n = len(self.units)
        return partition_spec(self.base, self.units,
                              [b for b in (i, j) if 0 < b < n] + list(rest), head=self.head)

    @staticmethod
    def _step(key: Key) -> int:
        """The block's step: 1 for the first block, else 2 (the prefix is one block)."""
        return 1 if key[0] == 0 else 2

    def _labels(self, key: Key) -> list[str]:
        if key not in self.labels:
            t = self._step(key)
            fitted = t > 1 and t in fitted_steps(self.cut(key))
            self.labels[key] = [f"grow:{t}"] + ([f"shrink:{t}"] if fitted else [])
        return self.labels[key]

    def bound(self, key: Key) -> int:
        """How many of the block's steps are not measured yet, at most."""
        t = self._step(key)
        labels = [f"grow:{t}"] + ([f"shrink:{t}"] if t > 1 else [])
        return sum((key, label) not in self.peaks for label in labels)

    def _peak(self, key: Key, label: str) -> int:
        if (key, label) not in self.peaks:
            case = case_from_text(self.cut(key), label, batch_size=self.batch_size)
            self.peaks[(key, label)] = _peak(self.measure(case), self.objective)
            self.done += 1
            self._tell()
        return self.peaks[(key, label)]

    def grow(self, key: Key) -> int:
        """The block's grow step (measured): its cost when it has no stand-in to fit, else a
        lower bound of it."""
        return self._peak(key, self._labels(key)[0])

    def known(self, key: Key) -> int | None:
        """The larger of the block's measured steps (its cost once :meth:`exact`); None before
        its grow step is measured (then the cut is not even checked)."""
        if (key, f"grow:{self._step(key)}") not in self.peaks:
            return None
        return max(self.peaks[(key, label)] for label in self._labels(key)
                   if (key, label) in self.peaks)

    def exact(self, key: Key) -> bool:
        """Whether every step of the block is measured."""
        return all((key, label) in self.peaks for label in self._labels(key))

    def next_step(self, key: Key) -> None:
        """Measure the block's first step not yet measured (grow, then shrink)."""
        label = next(label for label in self._labels(key) if (key, label) not in self.peaks)
        self._peak(key, label)


def measure_once(measure: Measure) -> Measure:
    """``measure`` remembering its reports: a case measured again returns the first report
    (cases are equal when their spec, step and options are)."""
    reports: dict[TrainingCase, MemoryReport] = {}

    def once(case: TrainingCase) -> MemoryReport:
        if case not in reports:
            reports[case] = measure(case)
        return reports[case]

    return once


def _searched_blocks(count: int) -> list[tuple[int, int]]:
    """Every block ``[i, j)`` :func:`_best_bounds` may cost over ``count`` units (it costs
    all of them when it looks for the least largest cost): a first block ending before the
    last unit, and any later block."""
    return [(0, j) for j in range(1, count)] + [
        (i, j) for j in range(2, count + 1) for i in range(1, j)]


def _peak(report: MemoryReport | StepPeak, objective: Objective) -> int:
    return report.required_bytes if objective == "required" else report.tensor_peak_bytes


def _rank(plan: Plan, objective: Objective) -> tuple[int, int, int]:
    """Plans compare by their largest step, then the sum of their steps, then block count."""
    peaks = [_peak(s, objective) for s in plan.steps]
    return (max(peaks), sum(peaks), len(plan.bounds))


def exact_plan(
    spec: ModelSpec, units: Sequence[Unit], bounds: Sequence[int], *, batch_size: int,
    measure: Measure, head: str = "head",
) -> Plan:
    """Measure every ProFL step of the partition of ``spec`` at ``bounds`` and the full step."""
    cut = partition_spec(spec, units, bounds, head=head)
    reports = {case.label: measure(case) for case in all_cases(cut, batch_size=batch_size)}
    return _plan(cut, cut.blocks, units, bounds, reports)


def _plan(spec: ModelSpec, groups: Sequence[str], units: Sequence[Unit], bounds: Sequence[int],
          reports: dict[str, MemoryReport]) -> Plan:
    full = reports["full"]
    steps = tuple(StepPeak(case=label, tensor_peak_bytes=r.tensor_peak_bytes,
                           required_bytes=r.required_bytes)
                  for label, r in reports.items() if label != "full")
    return Plan(spec=spec, groups=tuple(groups), bounds=tuple(bounds),
                units=tuple(u.text for u in units), steps=steps,
                full_tensor_bytes=full.tensor_peak_bytes,
                full_required_bytes=full.required_bytes)


def stage_plan(spec: ModelSpec, *, batch_size: int, measure: Measure) -> Plan:
    """The model's own partition (a zoo model's stages) measured like a plan: the planner's
    reference."""
    base = replace(spec, blocks=()) if spec.name in MODEL_NAMES else spec
    model = build_model(base)
    per_block = block_units(model)
    bounds = list(itertools.accumulate(len(units) for units in per_block[:-1]))
    reports = {case.label: measure(case) for case in all_cases(base, batch_size=batch_size)}
    groups = (*[join(units) for units in per_block], head_group(model))
    return _plan(base, groups, [u for units in per_block for u in units], bounds, reports)
