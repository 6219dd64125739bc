"""A lower bound of a ProFL ``grow`` step's peak for the planner, from forwards on fake tensors.

The planner (:mod:`profl_core.memory.plan`) needs a block's exact cost only where the block can
be in a best partition; every other block needs a number that is at most its cost. This module
gives that number for the block's ``grow`` step (a lower bound of the block's cost) at the
price of a forward, where measuring the step costs a model build, two steps and the tracker.

The ``grow`` step of block ``[i, j)`` (units) of a partition whose later cuts are ``rest`` holds,
from before its forward until after its optimizer step:

* the parameters and buffers of units ``[0, j)`` (the frozen prefix and the block) and of its
  output module (a stand-in for each later block, then a fresh copy of the head), the input
  batch and its labels;
* the optimizer's state of every trainable parameter that has a gradient (made by the warm-up
  step; parameter-sized tensors, 1 each for SGD with momentum, 2 for Adam, 0 for plain SGD:
  :func:`optimizer_copies` counts them by stepping the task's own optimizer on a small tensor).

On top of that, at four moments of the step:

0. in the frozen prefix's forward (units ``[0, i)`` under ``no_grad``, batch norm in eval
   mode: ProFL's growing steps keep the prefix's statistics), when one of its ops returns:
   the storages it read and returned (its caller still holds them; what else is alive
   depends on how the prefix's modules are nested, so it is not counted);
1. after the block's forward: every storage that forward made and is alive at its end (what
   autograd saved for backward, and the block's output; not its input, which the batch is
   for the first block and the prefix's output otherwise);
2. after the output module's forward: the storages of 1. but the block's output (autograd holds
   them until the backward), and every storage the output module's forward made and is alive
   at its end;
3. in the optimizer step, while it updates the largest trainable parameter: a gradient for
   every trainable parameter the output reaches through the autograd graph, and the update's
   parameter-sized temporaries (SGD's weight-decayed gradient; counted like the state). On
   the CPU the optimizer updates one parameter at a time; with ``foreach`` it makes the
   temporaries of every parameter at once, which is more.

The step's live tensor bytes at each of those moments are at least that sum, so the largest
is at most the step's tensor peak (what ``dispatch`` and ``predict`` count, with the same
storage tracker) and at most its heap peak (the allocator holds every live storage), the
numbers the planner minimises. The storages are measured here on fake tensors: 0. by one
forward of every unit from the batch (:class:`_OpBytes`), 1. by one forward of units
``[i, n)`` per start ``i`` under the :class:`~profl_core.memory.dispatch.StorageTracker`,
both read at every unit boundary (the ops of units ``[i, j)`` do not depend on what runs
after them; at a boundary the probe holds only the current output, and what autograd saved
does not depend on how the step nests the modules), 2. by one forward of each output module.
It holds for the planner's cases: one float32 step of ProFL's default task, no
checkpointing, micro-batches or autocast (:func:`~profl_core.memory.case_text.case_from_text`
with the defaults). A deeper stand-in (``standin_depth`` > 1) only adds to the output module,
so the bound holds for it too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from profl_core.errors import ConfigError
from profl_core.fl.local import make_optimizer
from profl_core.memory.case import TrainingCase
from profl_core.memory.categories import Category
from profl_core.memory.dispatch import StorageTracker
from profl_core.memory.plan_units import Unit, partition_spec
from profl_core.memory.step import materialize
from profl_core.methods.registry import kind_owner
from profl_core.models import ExternalModel, ModelSpec, build_model, on_meta
from profl_core.models.wrapper import stand_in_module

#: Elements of the tensor the optimizer is stepped on to count its state (large enough that a
#: 0-d ``step`` count is no whole copy).
_PROBE_ELEMENTS = 1024


def _nbytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _held(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


def _tracker(known: Iterable[Tensor]) -> tuple[StorageTracker, int]:
    """A storage tracker that knows ``known`` already (views of them are no new storage), and
    its live bytes: what a measurement subtracts."""
    tracker = StorageTracker()
    for tensor in known:
        tracker.track(tensor, Category.BUFFER)
    return tracker, tracker.live_bytes


def _reached(output: Tensor, stop_fn: object,
             params: Sequence[nn.Parameter]) -> tuple[int, int, bool]:
    """The bytes of ``params`` that ``output``'s autograd graph reaches without going through
    the node ``stop_fn`` (None: none), the largest one's bytes, and whether it reaches it."""
    wanted = {id(p): p for p in params}
    reached: dict[int, Tensor] = {}
    seen: set[object] = set()
    found = False
    pending = [output.grad_fn]
    while pending:
        fn = pending.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if stop_fn is not None and fn is stop_fn:
            found = True
            continue
        variable = getattr(fn, "variable", None)
        if variable is not None and id(variable) in wanted:
            reached[id(variable)] = variable
        pending.extend(next_fn for next_fn, _ in fn.next_functions)
    largest = max((_nbytes([p]) for p in reached.values()), default=0)
    return _nbytes(reached.values()), largest, found


def optimizer_copies(case: TrainingCase) -> tuple[int, int]:
    """Parameter-sized tensors the optimizer of the task of ``case`` (its method's default
    settings) keeps per parameter (its state), and holds on top of that while it updates one
    parameter (temporaries: SGD's weight-decayed gradient): its second step on a small
    tensor, under the storage tracker."""
    info = kind_owner(case.kind)
    config = info.config_class.from_dict({"rounds": 1, "batch_size": case.batch_size,
                                          **info.fixed})
    task = replace(config.task(0, case.label, frozenset(), 0), optimizer=case.optimizer)
    param = nn.Parameter(torch.zeros(_PROBE_ELEMENTS))
    param.grad = torch.zeros(_PROBE_ELEMENTS)
    optimizer = make_optimizer(task, [param])
    optimizer.step()  # makes the state
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor)]
    tracker, before = _tracker([param, param.grad, *state])
    with tracker:
        optimizer.step()
    size = _nbytes([param])
    return _nbytes(state) // size, (tracker.tensor_peak_bytes - before) // size


class GrowBound:
    """Lower bounds of the ``grow`` steps of the blocks of partitions of one model (module doc).

    Args:
        base: the model spec the planner cuts.
        units: its layer units.
        head: its head's block group.
        case: a ``grow`` case the planner measures (batch size, optimizer, options).

    Raises:
        ConfigError: a case with step options the bound does not model.
    """

    def __init__(self, base: ModelSpec, units: Sequence[Unit], head: str, *,
                 case: TrainingCase) -> None:
        if (case.dtype, case.micro_batches, case.checkpoint, case.autocast) != (
                "float32", 1, False, None):
            raise ConfigError(f"case {case.label}: the grow-step bound models the default "
                              "float32 step only")
        self.count = len(units)
        self.batch_size = case.batch_size
        self.identity = base.identity_standins
        self.name = base.name
        self.copies, self.temporaries = optimizer_copies(case)
        self.fake = FakeTensorMode()
        with on_meta():
            model = build_model(partition_spec(base, units, range(1, self.count), head=head))
        assert isinstance(model, ExternalModel)
        self.model = model
        with self.fake:
            materialize(model, torch.device("cpu"))
            inputs = torch.empty((self.batch_size, *base.input_shape))
            labels = torch.empty(self.batch_size, dtype=torch.int64)
        self.input_bytes = _nbytes([inputs, labels])
        self.shapes = (tuple(base.input_shape), *model.output_shapes())
        self.unit_bytes = [_nbytes(_held(model.block(k))) for k in range(self.count)]
        self.prefix_peaks: list[int] = []
        self.blocks: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self.outputs: dict[tuple[int, tuple[int, ...], int], tuple[int, int, int, int]] = {}

    def __call__(self, key: tuple[int, int, tuple[int, ...]]) -> int:
        """At most the peak of the ``grow`` step of block ``[i, j)`` with later cuts ``rest``,
        ``key = (i, j, rest)`` (tensor and heap alike)."""
        i, j, rest = key
        if (i, j) not in self.blocks:
            self._forward_units(i)
        if not self.prefix_peaks:
            self._forward_prefix()
        block_live, block_saved, block_grads, block_largest = self.blocks[(i, j)]
        om_held, om_live, om_grads, om_largest = self._output_module(j, rest, 3 if i else 2)
        grads = block_grads + om_grads
        held = sum(self.unit_bytes[:j]) + om_held + self.input_bytes + self.copies * grads
        update = grads + self.temporaries * max(block_largest, om_largest)
        return held + max(self.prefix_peaks[i], block_live, block_saved + om_live, update)

    def _forward_prefix(self) -> None:
        """Every unit frozen (eval mode, ``no_grad``) from the batch: up to every boundary
        ``i``, the most bytes one op of that forward reads or returns of the storages the
        forward made (:class:`_OpBytes`)."""
        model = self.model
        model.eval()
        self.prefix_peaks = [0]
        with self.fake:
            x = torch.empty((self.batch_size, *self.shapes[0]))
            ops = _OpBytes(existing=[*_held(model), x])
            with ops, torch.no_grad():
                for k in range(self.count - 1):
                    x = model.block(k)(x)
                    self.prefix_peaks.append(ops.peak_bytes)
            del x

    def _forward_units(self, start: int) -> None:
        """Units ``[start, n)`` trainable, run from an input that needs no gradient: at every
        boundary ``j``, the live bytes the forward made, those without the current output, the
        bytes of the parameters of ``[start, j)`` the output reaches and the largest one's."""
        model = self.model
        for k in range(self.count):
            model.block(k).train(k >= start)
            for param in model.block(k).parameters():
                param.requires_grad_(k >= start)
        with self.fake:
            x = torch.empty((self.batch_size, *self.shapes[start]))
            # (the input is known: the batch, or not counted)
            tracker, before = _tracker([*_held(model), x])
            grads = largest = 0
            with tracker:
                for k in range(start, self.count):
                    stop_fn = x.grad_fn  # (the input's node; the input itself is let go)
                    x = model.block(k)(x)
                    live = tracker.live_bytes - before
                    own, own_largest, chained = _reached(x, stop_fn,
                                                         list(model.block(k).parameters()))
                    grads, largest = ((own + grads, max(own_largest, largest)) if chained
                                      else (own, own_largest))
                    output = x.untyped_storage().nbytes()
                    self.blocks[(start, k + 1)] = (live, max(0, live - output), grads, largest)
            del x, stop_fn

    def _output_module(self, j: int, rest: tuple[int, ...],
                       first: int) -> tuple[int, int, int, int]:
        """The output module of the step whose block ends at ``j`` with later cuts ``rest``
        (its first stand-in is block ``first``'s): its parameter and buffer bytes, the live
        bytes of its forward (from an input that needs a gradient), the bytes of the
        parameters its output reaches and the largest one's."""
        if (j, rest, first) not in self.outputs:
            cuts = [j, *rest, self.count]
            later = [(self.shapes[a], self.shapes[b]) for a, b in itertools.pairwise(cuts)
                     if a < b]
            with on_meta():
                module = stand_in_module(later, self.model.head, model=self.name, first=first,
                                         identity=self.identity)
            with self.fake:
                materialize(module, torch.device("cpu"))
                module.train()
                x = torch.empty((self.batch_size, *self.shapes[j]), requires_grad=True)
                tracker, before = _tracker([*_held(module), x])
                with tracker:
                    y = module(x)
                live = tracker.live_bytes - before
                grads, largest, _ = _reached(y, None, list(module.parameters()))
                del y
            self.outputs[(j, rest, first)] = (_nbytes(_held(module)), live, grads, largest)
        return self.outputs[(j, rest, first)]


class _OpBytes(TorchDispatchMode):
    """The most bytes of storages made within it that one op reads or returns: those are
    alive when the op returns (its caller still holds its inputs), whatever else holds them,
    so the probes' live bytes then are at least that on top of what the step holds. The
    storages of ``existing`` (and of views of them) are not made within it."""

    def __init__(self, existing: Iterable[Tensor]) -> None:
        super().__init__()
        # storage id -> a tensor on it (kept alive, so that no id is reused)
        self.existing = {id(t.untyped_storage()): t for t in existing}
        self.made: dict[int, Tensor] = {}
        self.peak_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor) and id(leaf.untyped_storage()) not in self.existing:
                self.made.setdefault(id(leaf.untyped_storage()), leaf)
        storages = {id(leaf.untyped_storage()): leaf.untyped_storage().nbytes()
                    for leaf in tree_leaves((args, kwargs, out)) if isinstance(leaf, Tensor)}
        self.peak_bytes = max(self.peak_bytes, sum(
            nbytes for key, nbytes in storages.items() if key in self.made))
        return out
