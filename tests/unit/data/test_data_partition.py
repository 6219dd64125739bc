"""Partitioners: disjoint and covering, seeded, skewed as promised; summary and skew helpers."""

from __future__ import annotations

import numpy as np
import pytest

from profl_core.data import client_summary, dirichlet, iid, label_skew, partition, shards
from profl_core.errors import ConfigError

# 10 balanced classes, 200 samples each, labels in random order.
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 200))

PARTITIONERS = {
    "iid": lambda y, k, rng: iid(y, k, rng),
    "dirichlet": lambda y, k, rng: dirichlet(y, k, rng, alpha=0.5),
    "shards": lambda y, k, rng: shards(y, k, rng, shards_per_client=2),
}


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_parts_are_disjoint_and_cover_all_samples(name: str) -> None:
    parts = PARTITIONERS[name](LABELS, 7, np.random.default_rng(0))
    assert len(parts) == 7
    assert all(p.dtype == np.int64 for p in parts)
    merged = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(merged, np.arange(LABELS.size))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_same_seed_gives_same_partition(name: str) -> None:
    first = PARTITIONERS[name](LABELS, 5, np.random.default_rng(42))
    second = PARTITIONERS[name](LABELS, 5, np.random.default_rng(42))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [p.size for p in iid(LABELS, 7, np.random.default_rng(0))]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_is_much_more_skewed_than_large_alpha() -> None:
    # Threshold: alpha=0.1 gives a label skew above 0.5 and at least 5x that of alpha=100
    # (measured about 0.65 vs 0.04 on this set).
    rng = np.random.default_rng(7)
    skewed = label_skew(LABELS, dirichlet(LABELS, 10, rng, alpha=0.1), 10)
    near_iid = label_skew(LABELS, dirichlet(LABELS, 10, rng, alpha=100.0), 10)
    assert skewed > 0.5
    assert skewed > 5 * near_iid


def test_dirichlet_gives_every_client_min_size() -> None:
    parts = dirichlet(LABELS, 20, np.random.default_rng(3), alpha=0.3, min_size=20)
    assert min(p.size for p in parts) >= 20


def test_dirichlet_impossible_min_size_raises_one_line() -> None:
    labels = np.repeat(np.arange(2), 50)
    with pytest.raises(ConfigError, match="raise alpha") as info:
        dirichlet(labels, 10, np.random.default_rng(0), alpha=0.01, min_size=10, max_tries=5)
    assert "\n" not in str(info.value)


def test_shards_give_each_client_at_most_shards_per_client_labels() -> None:
    # Label-sorted toy set: 10 labels x 20 samples; 5 clients x 2 shards = 10 shards of 20.
    labels = np.repeat(np.arange(10), 20)
    parts = shards(labels, 5, np.random.default_rng(1), shards_per_client=2)
    assert all(np.unique(labels[p]).size <= 2 for p in parts)
    assert all(p.size == 40 for p in parts)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("iid", "iid"), ("dirichlet:0.5", "dirichlet"), ("shards:2", "shards")],
)
def test_partition_spec_matches_the_named_function(spec: str, expected: str) -> None:
    direct = {
        "iid": lambda rng: iid(LABELS, 4, rng),
        "dirichlet": lambda rng: dirichlet(LABELS, 4, rng, alpha=0.5),
        "shards": lambda rng: shards(LABELS, 4, rng, shards_per_client=2),
    }[expected](np.random.default_rng(9))
    parsed = partition(spec, LABELS, 4, np.random.default_rng(9))
    for a, b in zip(parsed, direct, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec", ["foo", "dirichlet", "dirichlet:x", "shards:1.5", "iid:3"])
def test_bad_partition_spec_raises_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"use iid, dirichlet:ALPHA or shards:K"):
        partition(spec, LABELS, 4, np.random.default_rng(0))


def test_client_summary_counts_labels_per_client() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    parts = [np.array([0, 3]), np.array([1, 2, 4, 5])]
    table = client_summary(labels, parts, 3)
    assert list(table.columns) == ["client", "samples", "0", "1", "2"]
    assert table.to_numpy().tolist() == [[0, 2, 1, 0, 1], [1, 4, 1, 1, 2]]


def test_label_skew_of_one_class_per_client_is_one_minus_one_over_k() -> None:
    # Each client holds exactly one of K balanced classes: TV(one-hot, uniform) = 1 - 1/K.
    labels = np.repeat(np.arange(4), 5)
    parts = [np.flatnonzero(labels == c) for c in range(4)]
    assert label_skew(labels, parts, 4) == pytest.approx(0.75)


def test_label_skew_is_zero_when_each_client_has_the_global_mix() -> None:
    labels = np.tile(np.arange(5), 4)  # clients take 5 consecutive samples: one of each label
    parts = [np.arange(i * 5, (i + 1) * 5) for i in range(4)]
    assert label_skew(labels, parts, 5) == pytest.approx(0.0)
