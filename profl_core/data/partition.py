"""Split a dataset's sample indices among federated clients.

Every partitioner is a pure function of ``(labels, num_clients, rng)`` and returns one sorted
int64 index array per client; the arrays are disjoint and together cover every sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from profl_core.errors import ConfigError

PARTITION_HELP = "use iid, dirichlet:ALPHA or shards:K"


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(
            f"labels: need a 1-D integer array, got shape {array.shape} dtype {array.dtype}"
        )
    if array.size and array.min() < 0:
        raise ConfigError("labels: found a negative label; labels must be in [0, num_classes)")
    return array.astype(np.int64, copy=False)


def _check_clients(num_clients: int, num_samples: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"clients={num_clients}: use at least 1 client")
    if num_clients > num_samples:
        raise ConfigError(
            f"clients={num_clients} exceeds the {num_samples} samples; use fewer clients"
        )


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(
    labels: Sequence[int] | np.ndarray, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` parts whose sizes differ by at most one.

    Args:
        labels: One integer label per sample (only its length is used).
        num_clients: Number of clients.
        rng: Source of randomness.

    Returns:
        One sorted int64 index array per client.
    """
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    return _finish(np.array_split(rng.permutation(y.size), num_clients))


def dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: each class is spread over clients with proportions ~ Dir(alpha).

    Small ``alpha`` (0.1) gives each client few classes; large ``alpha`` (100) is close to IID.
    The whole draw is repeated (at most ``max_tries`` times) until every client holds at
    least ``min_size`` samples.

    Args:
        labels: One integer label per sample.
        num_clients: Number of clients.
        rng: Source of randomness.
        alpha: Dirichlet concentration (> 0).
        min_size: Fewest samples any client may get.
        max_tries: Most draws before giving up.

    Returns:
        One sorted int64 index array per client.

    Raises:
        ConfigError: Bad arguments, or no draw gave every client ``min_size`` samples.
    """
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    if not alpha > 0:
        raise ConfigError(f"dirichlet alpha={alpha}: use a positive number, e.g. dirichlet:0.5")
    if min_size < 0 or min_size * num_clients > y.size:
        raise ConfigError(
            f"dirichlet min_size={min_size}: use 0..{y.size // num_clients} for "
            f"{y.size} samples and {num_clients} clients"
        )
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(max(1, max_tries)):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for members in by_class:
            shuffled = rng.permutation(members)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * shuffled.size).astype(np.int64)
            for client, chunk in enumerate(np.split(shuffled, cuts)):
                parts[client].append(chunk)
        merged = [np.concatenate(p) if p else np.empty(0, np.int64) for p in parts]
        if min(p.size for p in merged) >= min_size:
            return _finish(merged)
    raise ConfigError(
        f"dirichlet:{alpha}: no draw in {max_tries} gave every one of {num_clients} clients "
        f">= {min_size} samples; raise alpha, lower min_size or use fewer clients"
    )


def shards(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """McMahan et al.'s pathological split: label-sorted shards, a few per client.

    Samples are sorted by label (ties in random order), cut into
    ``num_clients * shards_per_client`` contiguous shards, and each client gets
    ``shards_per_client`` shards chosen at random.

    Args:
        labels: One integer label per sample.
        num_clients: Number of clients.
        rng: Source of randomness.
        shards_per_client: Shards each client gets (>= 1).

    Returns:
        One sorted int64 index array per client.

    Raises:
        ConfigError: Bad arguments or more shards than samples.
    """
    y = _labels(labels)
    _check_clients(num_clients, y.size)
    if shards_per_client < 1:
        raise ConfigError(f"shards:{shards_per_client}: use at least 1 shard per client")
    num_shards = num_clients * shards_per_client
    if num_shards > y.size:
        raise ConfigError(
            f"shards:{shards_per_client} with {num_clients} clients needs {num_shards} shards "
            f"but there are {y.size} samples; use fewer clients or shards"
        )
    perm = rng.permutation(y.size)
    order = perm[np.argsort(y[perm], kind="stable")]
    pieces = np.array_split(order, num_shards)
    owners = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return _finish([np.concatenate([pieces[s] for s in row]) for row in owners])


def partition(
    spec: str, labels: Sequence[int] | np.ndarray, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Partition by a text spec: ``"iid"``, ``"dirichlet:ALPHA"`` or ``"shards:K"``.

    Args:
        spec: The partition spec, e.g. ``"dirichlet:0.5"``.
        labels: One integer label per sample.
        num_clients: Number of clients.
        rng: Source of randomness.

    Returns:
        One sorted int64 index array per client.

    Raises:
        ConfigError: An unparsable spec or bad arguments.
    """
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    try:
        if kind == "iid" and not sep:
            return iid(labels, num_clients, rng)
        if kind == "dirichlet" and arg:
            return dirichlet(labels, num_clients, rng, alpha=float(arg))
        if kind == "shards" and arg:
            return shards(labels, num_clients, rng, shards_per_client=int(arg))
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"partition {spec!r}: {PARTITION_HELP}") from err
    raise ConfigError(f"partition {spec!r}: {PARTITION_HELP}")


def _histograms(
    labels: Sequence[int] | np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    y = _labels(labels)
    if y.size and y.max() >= num_classes:
        raise ConfigError(
            f"num_classes={num_classes} but labels go up to {int(y.max())}; "
            "pass the dataset's num_classes"
        )
    if not parts:
        return np.zeros((0, num_classes), dtype=np.int64)
    return np.stack(
        [np.bincount(y[np.asarray(p, dtype=np.int64)], minlength=num_classes) for p in parts]
    )


def client_summary(
    labels: Sequence[int] | np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> pd.DataFrame:
    """One row per client: its sample count and label histogram.

    Args:
        labels: One integer label per sample.
        parts: Index arrays, one per client (as returned by the partitioners).
        num_classes: Number of classes; one histogram column per class.

    Returns:
        Columns ``client``, ``samples`` and ``"0"`` .. ``str(num_classes - 1)`` (counts).
    """
    hist = _histograms(labels, parts, num_classes)
    table = pd.DataFrame(hist, columns=[str(c) for c in range(num_classes)])
    table.insert(0, "samples", hist.sum(axis=1))
    table.insert(0, "client", np.arange(len(parts)))
    return table


def label_skew(
    labels: Sequence[int] | np.ndarray, parts: Sequence[np.ndarray], num_classes: int
) -> float:
    """Mean total-variation distance between each client's label distribution and the global one.

    0 means every client sees the global label mix (IID); values near 1 mean clients hold
    labels the population rarely has. Clients without samples are left out.

    Args:
        labels: One integer label per sample.
        parts: Index arrays, one per client.
        num_classes: Number of classes.

    Returns:
        The mean distance, in ``[0, 1]``.
    """
    y = _labels(labels)
    hist = _histograms(y, parts, num_classes).astype(np.float64)
    sizes = hist.sum(axis=1)
    hist = hist[sizes > 0]
    if hist.shape[0] == 0:
        return 0.0
    global_dist = np.bincount(y, minlength=num_classes) / y.size
    local = hist / hist.sum(axis=1, keepdims=True)
    return float(np.mean(0.5 * np.abs(local - global_dist).sum(axis=1)))
