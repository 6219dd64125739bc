"""Effective movement: ProFL's block-freezing metric (profl-paper.md §1.6).

For the sampled scalars ``θ_r ∈ R^d`` of the active block, logged once per round, the effective
movement over a window of ``H`` round-to-round differences is::

    EM_r = ||θ_r − θ_{r−H}||_1 / Σ_{j=r−H+1..r} ||θ_j − θ_{j−1}||_1      ∈ [0, 1]

the net displacement over the path length. Near 1 the block still moves in one direction
(learning); near 0 it oscillates around a point (converged). A driftless random walk gives
about ``1/sqrt(H)`` (0.22 for ``H = 20``).

The authors' freeze rule is not published (only ``window_size: 20``, ``evaluation_number: 15``,
``slope_threshold: 0.2`` are). This module implements one exact reading of it, documented in
:func:`should_freeze`. Everything here is pure NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from profl_core.errors import ConfigError


def effective_movement(trajectory: np.ndarray, window: int) -> float:
    """EM at the last row of ``trajectory`` over its last ``window`` differences.

    Args:
        trajectory: ``rounds x d`` array; row ``j`` holds the sampled scalars after round ``j``
            (row 0 may be the values before the step's first round).
        window: ``H``, the number of round-to-round differences (>= 1).

    Returns:
        ``||θ_r − θ_{r−H}||_1 / Σ_j ||Δ_j||_1``. When nothing moved at all (0/0) the result is
        0.0: a block that does not move is treated like one that has stopped learning.

    Raises:
        ConfigError: ``window < 1`` or fewer than ``window + 1`` rows.
    """
    traj = np.asarray(trajectory, dtype=np.float64)
    if traj.ndim != 2:
        raise ConfigError(f"effective movement: trajectory must be rounds x d, got {traj.shape}")
    if window < 1:
        raise ConfigError(f"effective movement: window={window}; use 1 or more")
    if traj.shape[0] < window + 1:
        raise ConfigError(
            f"effective movement: {traj.shape[0]} rows; window={window} needs {window + 1}"
        )
    last = traj[-(window + 1):]
    net = float(np.abs(last[-1] - last[0]).sum())
    path = float(np.abs(np.diff(last, axis=0)).sum())
    if path == 0.0:
        return 0.0
    return net / path


def em_series(trajectory: np.ndarray, window: int) -> np.ndarray:
    """EM at every row that has a full window: rows ``window .. rounds-1``.

    Args:
        trajectory: ``rounds x d`` array of logged scalars.
        window: ``H``.

    Returns:
        A float64 array of length ``max(0, rounds - window)``.
    """
    traj = np.asarray(trajectory, dtype=np.float64)
    if traj.ndim != 2:
        raise ConfigError(f"effective movement: trajectory must be rounds x d, got {traj.shape}")
    return np.array(
        [effective_movement(traj[: r + 1], window) for r in range(window, traj.shape[0])],
        dtype=np.float64,
    )


def sample_indices(num_scalars: int, k: int = 10_000, *, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` distinct scalar indices out of ``num_scalars``, sorted (all if fewer).

    Args:
        num_scalars: Number of scalars in the active block (>= 1).
        k: How many to sample.
        rng: Source of randomness.

    Returns:
        Sorted int64 indices.
    """
    if num_scalars < 1 or k < 1:
        raise ConfigError(f"sample_indices: num_scalars={num_scalars}, k={k}; use positive values")
    if num_scalars <= k:
        return np.arange(num_scalars, dtype=np.int64)
    return np.sort(rng.choice(num_scalars, size=k, replace=False)).astype(np.int64)


def fitted_change(values: np.ndarray) -> float:
    """Change of the least-squares line through ``values`` over their span: ``slope * (n-1)``."""
    y = np.asarray(values, dtype=np.float64)
    n = y.shape[0]
    if n < 2:
        return 0.0
    x = np.arange(n, dtype=np.float64)
    x -= x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    return slope * (n - 1)


def should_freeze(
    em_values: np.ndarray,
    *,
    evaluation_number: int = 15,
    slope_threshold: float = 0.2,
    em_level: float = 0.5,
) -> bool:
    """Decide whether the active block has converged (the exact rule used here).

    Let ``y`` be the last ``evaluation_number`` EM values. Fit a least-squares line to ``y``
    against ``0 .. n-1``. Freeze when **both**

    1. the EM has flattened: ``|slope| * (n - 1) < slope_threshold``, i.e. the fitted line
       changes EM by less than ``slope_threshold`` over the fit span (EM lies in [0, 1], so a
       per-round slope of 0.2 would be meaningless; the authors' 0.2 is read as the change over
       the span), and
    2. it has flattened low: ``mean(y) < em_level``. Without this a block drifting steadily
       (EM flat near 1) would freeze. The default 0.5 means "less than half of the L1 path is
       net displacement"; a driftless random walk gives ~``1/sqrt(H)``.

    With fewer than ``evaluation_number`` values it never freezes.

    Args:
        em_values: The EM series of the current step (e.g. from :func:`em_series`).
        evaluation_number: How many of the latest EM values the line is fitted to (>= 2).
        slope_threshold: Largest fitted EM change over the span that counts as flat.
        em_level: Mean EM over the span must be below this.

    Returns:
        True when the block should be frozen.
    """
    if evaluation_number < 2:
        raise ConfigError(f"evaluation_number={evaluation_number}; use 2 or more")
    y = np.asarray(em_values, dtype=np.float64)
    if y.shape[0] < evaluation_number:
        return False
    y = y[-evaluation_number:]
    return abs(fitted_change(y)) < slope_threshold and float(y.mean()) < em_level


@dataclass(frozen=True, kw_only=True)
class FreezeRule:
    """When a ProFL step ends: EM convergence bounded by minimum and maximum rounds.

    Attributes:
        window: EM window ``H`` (authors' ``window_size``).
        evaluation_number: EM values the line is fitted to.
        slope_threshold: See :func:`should_freeze`.
        em_level: See :func:`should_freeze`.
        min_rounds: The step never ends before this many rounds.
    """

    window: int = 20
    evaluation_number: int = 15
    slope_threshold: float = 0.2
    em_level: float = 0.5
    min_rounds: int = 1

    def rounds_needed(self) -> int:
        """Fewest rounds before EM can end a step: ``window + evaluation_number - 1``."""
        return self.window + self.evaluation_number - 1

    def decide(self, trajectory: np.ndarray, rounds_done: int, max_rounds: int) -> str | None:
        """Why the step ends after ``rounds_done`` rounds: ``"cap"``, ``"em"``, or None.

        Args:
            trajectory: ``(rounds_done + 1) x d`` sampled scalars (row 0 = before the step).
            rounds_done: Rounds trained in this step so far.
            max_rounds: The step ends at this many rounds whatever EM says (``"cap"``).

        Returns:
            ``"cap"`` at ``max_rounds``; ``"em"`` when :func:`should_freeze` says the block has
            converged (never before ``min_rounds``); None while the step goes on.
        """
        if rounds_done >= max_rounds:
            return "cap"
        if rounds_done < self.min_rounds:
            return None
        values = em_series(trajectory, self.window)
        converged = should_freeze(
            values,
            evaluation_number=self.evaluation_number,
            slope_threshold=self.slope_threshold,
            em_level=self.em_level,
        )
        return "em" if converged else None
