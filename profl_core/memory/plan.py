"""A budget-aware partition planner for ProFL (``profl plan``; issue 14, DESIGN §3).

ProFL trains one block at a time, so its largest step's peak is what decides which devices
can take part. The model's stages are one partition; this module chooses the block boundaries
at the granularity of the model's *layers* instead, to make the largest step's peak as small
as possible with at most ``max_blocks`` blocks.

Layers (:func:`layer_units`): the children of every block of the model, cut so that a unit
starts at each child holding a weight layer (convolution, linear, attention) and the
parameter-free children (batch norm, ReLU, pooling) stay with the weight layer before them
(``conv, bn, relu`` is one unit; a ResNet BasicBlock is one unit). A partition is a list of
block *groups* over those units (:mod:`profl_core.models.block_groups` syntax, ``+`` joining
pieces of different stages) plus the model's head; it is an ordinary
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
and those are the peaks reported. A case met twice in one planning run is measured once
(:func:`measure_once`), a block's steps once per ``(i, j, later cuts)``, a block's ``shrink``
step only when the block can be in a best partition (its ``grow`` step is a lower bound of
its cost; :func:`_search` proves the boundaries are the ones every cost would give), and a
cut is not built to learn that its ``shrink`` steps have a stand-in to fit
(:func:`~profl_core.memory.case.fitted_steps`). With a fleet, the objective is the share of
devices that fit every step: it is a decreasing step function of the largest peak, so the
same partition maximises it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from torch import nn

from profl_core.errors import ConfigError
from profl_core.memory.case import TrainingCase, all_cases, fitted_steps
from profl_core.memory.case_text import case_from_text
from profl_core.memory.report import MemoryReport
from profl_core.models import MODEL_NAMES, BlockedModel, ModelSpec, build_model

#: Layers that start a unit: the weight layers. Everything else joins the unit before it.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention,
)

Measure = Callable[[TrainingCase], MemoryReport]
#: ``progress(search, searches, done, total)``: search ``search`` (1-based, at most
#: ``searches``) has measured ``done`` of the at most ``total`` block steps it may need.
Progress = Callable[[int, int, int, int], None]
Objective = Literal["required", "tensor"]
OBJECTIVES: tuple[str, ...] = ("required", "tensor")


@dataclass(frozen=True)
class Unit:
    """One layer unit: children ``first..last`` of module ``parent`` (dotted names).

    Attributes:
        parent: the module path (``block1``, ``features``; ``""`` for the top level).
        first: the first child's name.
        last: the last child's name (``""``: the unit is ``first`` alone, a leaf block).
    """

    parent: str
    first: str
    last: str

    @property
    def text(self) -> str:
        """The unit as a block group: ``block1.3``, ``block1.0-2`` or ``conv1-maxpool``."""
        name = f"{self.parent}.{self.first}" if self.parent else self.first
        return name if self.last in ("", self.first) else f"{name}-{self.last}"


def _has_weight_layer(module: nn.Module) -> bool:
    return any(isinstance(m, WEIGHT_LAYERS) for m in module.modules())


def _group_parent(group: str) -> str:
    """The module path whose children a block group's block holds: the range's parent for
    ``features.1-3`` (``""`` at the top level), the module itself for a name."""
    if "-" not in group:
        return group
    left = group.rsplit("-", 1)[0]
    return left.rpartition(".")[0]


def block_units(model: BlockedModel) -> list[list[Unit]]:
    """The layer units of every block of the model, in forward order (see the module doc),
    named by their paths in the module the model's block groups refer to."""
    groups = getattr(model, "groups", None) or model.block_names()
    out: list[list[Unit]] = []
    for index, group in enumerate(groups[:model.num_blocks]):
        if "+" in group:
            raise ConfigError(f"block group {group!r} joins pieces; plan from the model's own "
                              "partition")
        children = list(model.block(index).named_children())
        if len(children) < 2:
            parent, _, name = group.rpartition(".")  # a leaf block: one unit, its own group
            out.append([Unit(parent, name, "")])
            continue
        parent = _group_parent(group)
        units: list[Unit] = []
        start = 0
        for k in range(1, len(children) + 1):
            if k == len(children) or _has_weight_layer(children[k][1]):
                units.append(Unit(parent, children[start][0], children[k - 1][0]))
                start = k
        out.append(units)
    return out


def layer_units(model: BlockedModel) -> list[Unit]:
    """Every block's layer units, in forward order (:func:`block_units`)."""
    return [unit for units in block_units(model) for unit in units]


def join(units: Sequence[Unit]) -> str:
    """The block group of consecutive units: runs inside one parent merge into a range and
    runs of different parents are joined with ``+`` (``block1.3-4+block2.0``)."""
    pieces: list[Unit] = []
    for unit in units:
        if pieces and pieces[-1].parent == unit.parent:
            pieces[-1] = Unit(unit.parent, pieces[-1].first, unit.last or unit.first)
        else:
            pieces.append(unit)
    return "+".join(piece.text for piece in pieces)


def head_group(model: BlockedModel) -> str:
    """The block group of the model's head (``head`` for a zoo model)."""
    groups = getattr(model, "groups", None)
    return groups[-1] if groups else "head"


def partition_spec(spec: ModelSpec, units: Sequence[Unit], bounds: Sequence[int], *,
                   head: str = "head") -> ModelSpec:
    """``spec`` cut at unit boundaries ``bounds`` (``0 < b_1 < ... < L``, the end excluded),
    the head group ``head`` last."""
    cuts = [0, *bounds, len(units)]
    groups = [join(units[a:b]) for a, b in itertools.pairwise(cuts)]
    return replace(spec, blocks=(*groups, head))


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


def _best_bounds(cost: Callable[[int, int], int], count: int,
                 max_blocks: int) -> tuple[int, ...]:
    """Boundaries of 2..``max_blocks`` blocks ``[i, j)`` over ``count`` units that minimise
    the largest ``cost(i, j)``; among those, the smallest sum of costs (more of the fleet in
    the other steps), then the fewest blocks.

    Two dynamic programmes over (blocks, end unit): the first finds the least largest cost
    ``M``, the second the least sum with every block's cost at most ``M``.
    """
    if count < 2:
        raise ConfigError(f"the model has {count} layer unit(s); a partition needs at least 2")

    def solve(limit: int | None) -> tuple[int, int, int, tuple[int, ...]]:
        # best[(k, j)]: (value, cuts) of k blocks covering units [0, j)
        best: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
        for j in range(1, count):  # a first block never ends the model
            c = cost(0, j)
            if limit is None or c <= limit:
                best[(1, j)] = (c, ())
        for k in range(2, max_blocks + 1):
            for j in range(k, count + 1):
                options = []
                for i in range(k - 1, j):
                    if (k - 1, i) not in best:
                        continue
                    value, cuts = best[(k - 1, i)]
                    c = cost(i, j)
                    if limit is not None and c > limit:
                        continue
                    options.append((max(value, c) if limit is None else value + c, (*cuts, i)))
                if options:
                    best[(k, j)] = min(options)
        finals = [(best[(k, count)][0], k, best[(k, count)][1])
                  for k in range(2, max_blocks + 1) if (k, count) in best]
        value, blocks, cuts = min(finals)
        return value, blocks, 0, cuts

    least_max = solve(None)[0]
    return solve(least_max)[3]


def plan_partition(
    spec: ModelSpec, *, batch_size: int, measure: Measure, max_blocks: int = 8,
    refinements: int = 3, objective: Objective = "required",
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
        progress: told when a search starts and after every block step it measures (see
            :data:`Progress`); a search's total counts the steps of its blocks not already
            measured by an earlier search (a bound: shrink steps that cannot change the
            answer are skipped, :func:`_search`).

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
    later: tuple[int, ...] = ()  # the previous search's cuts; none at first
    best: Plan | None = None
    for search in range(1, searches + 1):
        keys = {(i, j): (i, j, tuple(b for b in later if b > j)) for i, j in _searched_blocks(n)}
        steps.start(search, searches, sum(steps.bound(key) for key in keys.values()), progress)
        bounds = _search(steps, keys, n, min(max_blocks, n))
        plan = exact_plan(base, units, bounds, batch_size=batch_size, measure=measure,
                          head=head)
        if best is None or _rank(plan, objective) < _rank(best, objective):
            best = plan
        if bounds == later:
            break
        later = bounds
    assert best is not None
    return best


def _search(steps: _BlockSteps, keys: dict[tuple[int, int], tuple[int, int, tuple[int, ...]]],
            count: int, max_blocks: int) -> tuple[int, ...]:
    """:func:`_best_bounds` over the block costs of ``keys`` (``(i, j)`` -> the key of
    :class:`_BlockSteps`), measuring no block's ``shrink`` step that cannot change its answer.

    1. Every block's ``grow`` step is measured: a lower bound of the block's cost.
    2. The partition best by those bounds is costed exactly; its largest cost ``upper`` is at
       least the least largest cost ``M`` of every partition.
    3. A block whose ``grow`` step exceeds ``upper`` (so ``M``) is in no partition that
       reaches ``M``: given its bound instead of its cost, the first programme still finds
       ``M`` (every partition through it stays above ``M``, every other keeps its value, so
       every state that reaches ``M`` keeps its entry) and the second leaves it out either
       way (both numbers exceed ``M``). The boundaries are the ones every cost would give.
    """
    grow = {ij: steps.grow(key) for ij, key in keys.items()}
    seed = _best_bounds(lambda i, j: grow[(i, j)], count, max_blocks)
    upper = max(steps.cost(keys[ij]) for ij in itertools.pairwise([0, *seed, count]))

    def block_cost(i: int, j: int) -> int:
        return grow[(i, j)] if grow[(i, j)] > upper else steps.cost(keys[(i, j)])

    return _best_bounds(block_cost, count, max_blocks)


class _BlockSteps:
    """The ProFL steps that cost a block ``[i, j)`` with the later cuts ``rest`` (a key
    ``(i, j, rest)``), measured at most once per planning run: its ``grow:t`` step (``t`` = 1
    for the first block, else 2: the prefix ``[0, i)`` is one frozen block) and, when its
    stand-in has a basic layer to fit, its ``shrink:t`` step; the block's cost is the larger.
    Tells ``progress`` after every step it measures (a search's total is the bound of
    :meth:`bound` over its blocks: a grow step is always measured, a shrink step only when
    the block can be in a best partition)."""

    def __init__(self, base: ModelSpec, units: Sequence[Unit], head: str, *, batch_size: int,
                 measure: Measure, objective: Objective) -> None:
        self.base, self.units, self.head = base, units, head
        self.batch_size, self.measure, self.objective = batch_size, measure, objective
        self.peaks: dict[tuple[tuple[int, int, tuple[int, ...]], str], int] = {}
        self.labels: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
        self.progress: Progress | None = None
        self.search = self.searches = self.done = self.total = 0

    def start(self, search: int, searches: int, total: int, progress: Progress | None) -> None:
        """A search starts: ``total`` steps at most to measure."""
        self.search, self.searches, self.done, self.total = search, searches, 0, total
        self.progress = progress
        if progress is not None:
            progress(search, searches, 0, total)

    def _cut(self, key: tuple[int, int, tuple[int, ...]]) -> ModelSpec:
        i, j, rest = key
        n = len(self.units)
        return partition_spec(self.base, self.units,
                              [b for b in (i, j) if 0 < b < n] + list(rest), head=self.head)

    def _labels(self, key: tuple[int, int, tuple[int, ...]]) -> list[str]:
        if key not in self.labels:
            t = 1 if key[0] == 0 else 2
            fitted = t > 1 and t in fitted_steps(self._cut(key))
            self.labels[key] = [f"grow:{t}"] + ([f"shrink:{t}"] if fitted else [])
        return self.labels[key]

    def bound(self, key: tuple[int, int, tuple[int, ...]]) -> int:
        """How many of the block's steps are not measured yet, at most."""
        t = 1 if key[0] == 0 else 2
        labels = [f"grow:{t}"] + ([f"shrink:{t}"] if t > 1 else [])
        return sum((key, label) not in self.peaks for label in labels)

    def _peak(self, key: tuple[int, int, tuple[int, ...]], label: str) -> int:
        if (key, label) not in self.peaks:
            case = case_from_text(self._cut(key), label, batch_size=self.batch_size)
            self.peaks[(key, label)] = _peak(self.measure(case), self.objective)
            self.done += 1
            if self.progress is not None:
                self.progress(self.search, self.searches, self.done, self.total)
        return self.peaks[(key, label)]

    def grow(self, key: tuple[int, int, tuple[int, ...]]) -> int:
        """The block's grow step: its cost when it has no stand-in to fit, else a lower
        bound of it."""
        return self._peak(key, self._labels(key)[0])

    def cost(self, key: tuple[int, int, tuple[int, ...]]) -> int:
        """The block's cost: the larger of its steps."""
        return max(self._peak(key, label) for label in self._labels(key))


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
