"""How a client step carries out its options: micro-batches, activation checkpointing, autocast.

What each option does to the step, and why the result is still the full batch's step, is in
:mod:`profl_core.fl.local` (:class:`~profl_core.fl.local.LocalStep` uses these):

* :func:`micro_batches` splits a batch with ``torch.tensor_split`` into views whose sizes differ
  by at most one.
* :func:`checkpointing` runs modules under non-reentrant activation checkpointing; the
  recompute in backward runs batch norm with momentum 0 and puts ``num_batches_tracked`` back,
  so the running statistics are updated once per forward. The RNG state is stashed only for a
  module with a dropout of ``p > 0``.
* :func:`autocast_context` is ``torch.autocast`` in the task's dtype on the step's device type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.checkpoint import checkpoint

from profl_core.fl.types import ClientTask

#: :attr:`ClientTask.autocast` names and their torch dtypes.
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_context(task: ClientTask, device: torch.device) -> AbstractContextManager[Any]:
    """``torch.autocast`` on ``device``'s type in the task's dtype (nothing without one)."""
    if task.autocast is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[task.autocast])


def micro_batches(x: Tensor, y: Tensor | None, k: int) -> list[tuple[Tensor, Tensor | None]]:
    """``(x, y)`` split into ``min(k, len(x))`` views whose sizes differ by at most one."""
    if k == 1:
        return [(x, y)]
    parts = min(k, x.shape[0])
    xs = x.tensor_split(parts)
    ys: list[Tensor | None] = list(y.tensor_split(parts)) if y is not None else [None] * parts
    return list(zip(xs, ys, strict=True))


def _untrack_batch(bn: nn.Module, args: Any, output: Any) -> None:
    tracked = bn.num_batches_tracked
    assert isinstance(tracked, Tensor)
    tracked.sub_(1)  # its forward has just added 1


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Batch norm in train mode without changing its running statistics (the recompute).

    The same kernel runs (so the recompute saves the same tensors) with momentum 0, which
    leaves the running mean and variance as they are, and ``num_batches_tracked`` is put back
    after every call; all in place, nothing is allocated.
    """
    changed = [bn for bn in module.modules()
               if isinstance(bn, _BatchNorm) and bn.training and bn.track_running_stats]
    momenta = [bn.momentum for bn in changed]
    handles = [bn.register_forward_hook(_untrack_batch) for bn in changed
               if bn.num_batches_tracked is not None]
    for bn in changed:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum in zip(changed, momenta, strict=True):
            bn.momentum = momentum
        for handle in handles:
            handle.remove()


def _checkpointed(module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` of ``module`` run under non-reentrant activation checkpointing."""
    stochastic = any(isinstance(m, _DropoutNd) and m.p > 0 for m in module.modules())

    def run(*args: Any) -> Any:
        calls = 0

        def once(*inner: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return forward(*inner)
            with _running_stats_kept(module):  # the recompute in backward
                return forward(*inner)

        return checkpoint(once, *args, use_reentrant=False, preserve_rng_state=stochastic)

    return run


@contextmanager
def checkpointing(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Checkpoint each of ``modules`` (distinct modules) at its boundary while the body runs.

    The module's own ``forward`` is replaced on the instance, so its ``__call__`` (and the
    observer's hooks on it) runs once per forward; the recompute calls the original forward.
    """
    patched = list(modules)
    for module in patched:
        module.forward = _checkpointed(module, module.forward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in patched:
            del module.forward
