"""Aggregation: pure functions over name-keyed state dicts (DESIGN §3).

FedAvg with partial updates: each key is averaged over the clients that sent it, weighted by
their ``num_examples`` (or uniformly); keys no client sent keep the global value. With equal
weights this is the authors' ``average_weights`` count mean (profl-paper.md §1.8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from profl_core.errors import ConfigError
from profl_core.fl.types import ClientUpdate

Weighting = Literal["examples", "uniform"]


def weighted_mean(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Weighted mean of same-shaped tensors, accumulated in float64.

    Integer tensors (e.g. BN ``num_batches_tracked``) are rounded back to their dtype; floating
    tensors are cast back to theirs.
    """
    if not tensors or len(tensors) != len(weights):
        raise ConfigError("weighted_mean: need one weight per tensor and at least one tensor")
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("weighted_mean: weights must sum to a positive number")
    acc = torch.zeros(tensors[0].shape, dtype=torch.float64)
    for tensor, weight in zip(tensors, weights, strict=True):
        acc += tensor.detach().to("cpu", torch.float64) * (float(weight) / total)
    dtype = tensors[0].dtype
    if dtype.is_floating_point or dtype.is_complex:
        return acc.to(dtype)
    return acc.round().to(dtype)


def aggregate_partial(
    global_state: Mapping[str, Tensor],
    states: Sequence[Mapping[str, Tensor]],
    weights: Sequence[float],
) -> dict[str, Tensor]:
    """Merge partial client states into the global state.

    Args:
        global_state: Current server weights (every key).
        states: Client states; each may hold any subset of the global keys.
        weights: One weight per client (e.g. its number of examples).

    Returns:
        A new dict: for each key, the weighted mean over the clients holding it; keys no
        client holds keep the global tensor.

    Raises:
        ConfigError: A client key the server does not know, or a shape mismatch.
    """
    if len(states) != len(weights):
        raise ConfigError("aggregate: need one weight per client state")
    out = dict(global_state)
    holders: dict[str, list[int]] = {}
    for i, state in enumerate(states):
        for key, value in state.items():
            if key not in global_state:
                raise ConfigError(f"aggregate: client sent unknown key {key!r}")
            if tuple(value.shape) != tuple(global_state[key].shape):
                raise ConfigError(
                    f"aggregate: {key!r} has shape {tuple(value.shape)}, "
                    f"server has {tuple(global_state[key].shape)}"
                )
            holders.setdefault(key, []).append(i)
    for key, idx in holders.items():
        mean = weighted_mean([states[i][key] for i in idx], [weights[i] for i in idx])
        out[key] = mean.to(global_state[key].device)
    return out


def fedavg(
    global_state: Mapping[str, Tensor],
    updates: Sequence[ClientUpdate],
    *,
    weighting: Weighting = "examples",
) -> dict[str, Tensor]:
    """FedAvg of client updates into the global state (see :func:`aggregate_partial`).

    Args:
        global_state: Current server weights.
        updates: The round's client updates (order does not change the result beyond
            float rounding; the loop passes them sorted by client id).
        weighting: ``"examples"`` weights by ``num_examples``; ``"uniform"`` by count.
    """
    if not updates:
        return dict(global_state)
    weights = [
        float(u.num_examples) if weighting == "examples" else 1.0 for u in updates
    ]
    return aggregate_partial(global_state, [u.state for u in updates], weights)
