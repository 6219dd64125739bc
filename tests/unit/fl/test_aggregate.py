"""Aggregation against a NumPy reference, including partial tensors."""

import numpy as np
import pytest
import torch

from profl_core.errors import ConfigError
from profl_core.fl.aggregate import aggregate_partial, fedavg, weighted_mean
from profl_core.fl.types import ClientUpdate


def test_weighted_mean_matches_numpy() -> None:
    """Weighted mean of three tensors equals np.average with the same weights."""
    # Prepare
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    weights = [10.0, 30.0, 60.0]
    # Execute
    got = weighted_mean([torch.from_numpy(a) for a in arrays], weights)
    # Assert
    expected = np.average(np.stack(arrays), axis=0, weights=weights)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert got.dtype == torch.float32


def test_partial_updates_use_count_mean_over_holders() -> None:
    """A key is averaged over the clients that sent it; unsent keys keep the global value."""
    # Prepare
    rng = np.random.default_rng(1)
    glob = {k: torch.from_numpy(rng.standard_normal(5).astype(np.float32)) for k in "abc"}
    sent = [
        {"a": rng.standard_normal(5), "b": rng.standard_normal(5)},
        {"a": rng.standard_normal(5)},
        {"a": rng.standard_normal(5), "b": rng.standard_normal(5)},
    ]
    examples = [100, 50, 300]
    updates = [
        ClientUpdate(
            client_id=i, num_examples=n,
            state={k: torch.from_numpy(v.astype(np.float32)) for k, v in s.items()},
        )
        for i, (s, n) in enumerate(zip(sent, examples, strict=True))
    ]
    # Execute
    out = fedavg(glob, updates)
    uniform = fedavg(glob, updates, weighting="uniform")
    # Assert
    a_ref = np.average([s["a"] for s in sent], axis=0, weights=examples)
    b_ref = np.average([sent[0]["b"], sent[2]["b"]], axis=0, weights=[100, 300])
    np.testing.assert_allclose(out["a"].numpy(), a_ref, rtol=1e-5)
    np.testing.assert_allclose(out["b"].numpy(), b_ref, rtol=1e-5)
    assert torch.equal(out["c"], glob["c"])
    np.testing.assert_allclose(
        uniform["b"].numpy(), (sent[0]["b"] + sent[2]["b"]) / 2, rtol=1e-5
    )


def test_integer_buffers_round_back_to_int() -> None:
    """num_batches_tracked-like integer tensors stay integers."""
    out = weighted_mean([torch.tensor(3), torch.tensor(4)], [1.0, 2.0])
    assert out.dtype == torch.int64
    assert int(out) == 4


def test_unknown_key_or_shape_is_an_error() -> None:
    """A client cannot introduce keys or change shapes."""
    glob = {"a": torch.zeros(2)}
    with pytest.raises(ConfigError, match="unknown key 'z'"):
        aggregate_partial(glob, [{"z": torch.zeros(2)}], [1.0])
    with pytest.raises(ConfigError, match="shape"):
        aggregate_partial(glob, [{"a": torch.zeros(3)}], [1.0])
