"""Datasets: synthetic determinism, Fashion-MNIST reading and lookup, missing-data errors."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from profl_core.data import (
    DEBIAN_FASHION_MNIST_DIR,
    ArrayDataset,
    load_dataset,
    synthetic_dataset,
)
from profl_core.errors import ConfigError

FASHION_FILES = [
    f"{split}-{kind}-ubyte.gz"
    for split in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
]
HAVE_DEBIAN_FASHION = all((DEBIAN_FASHION_MNIST_DIR / f).is_file() for f in FASHION_FILES)


def _synthetic(seed: int) -> ArrayDataset:
    return synthetic_dataset(
        num_samples=200,
        input_shape=(1, 8, 8),
        num_classes=4,
        generator=torch.Generator().manual_seed(seed),
    )


def test_synthetic_is_deterministic_for_a_seeded_generator() -> None:
    a, b, c = _synthetic(5), _synthetic(5), _synthetic(6)
    assert torch.equal(a.x, b.x)
    assert torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert a.x.dtype == torch.float32
    assert a.y.dtype == torch.int64
    assert a.x.shape == (200, 1, 8, 8)


def test_synthetic_is_learnable_by_nearest_class_mean() -> None:
    # Oracle: class means estimated on the first half classify the second half well.
    ds = _synthetic(0)
    flat = ds.x.flatten(1)
    train, test = slice(0, 100), slice(100, 200)
    means = torch.stack([flat[train][ds.y[train] == c].mean(0) for c in range(4)])
    predicted = torch.cdist(flat[test], means).argmin(1)
    assert (predicted == ds.y[test]).float().mean() > 0.9


def test_subset_takes_rows_in_the_given_order() -> None:
    ds = _synthetic(1)
    sub = ds.subset(np.array([5, 2]))
    assert len(sub) == 2
    assert torch.equal(sub.x[0], ds.x[5])
    assert int(sub.y[1]) == int(ds.y[2])
    assert sub.num_classes == ds.num_classes


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    # idx format: magic (0, 0, dtype 0x08 = ubyte, ndim) then big-endian dims, then the data.
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_files_in_torchvision_layout_are_read_and_normalized(
    tmp_path: Path, compress: bool
) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(5 * 4 * 4).reshape(5, 4, 4) % 256
    labels = np.array([3, 1, 4, 1, 5])
    _write_idx(raw / "train-images-idx3-ubyte", images, compress)
    _write_idx(raw / "train-labels-idx1-ubyte", labels, compress)

    # The tiny folder comes first, so it wins over the Debian folder.
    ds = load_dataset(
        "fashion-mnist", split="train", search_dirs=[tmp_path, DEBIAN_FASHION_MNIST_DIR]
    )

    expected = (images[:, None].astype(np.float32) / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(ds.x.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y.numpy(), labels)
    assert ds.num_classes == 10


@pytest.mark.skipif(
    not HAVE_DEBIAN_FASHION,
    reason=f"Debian's dataset-fashion-mnist is not installed in {DEBIAN_FASHION_MNIST_DIR}",
)
def test_debian_fashion_mnist_has_the_published_sizes_and_is_normalized() -> None:
    dirs = [DEBIAN_FASHION_MNIST_DIR]
    train = load_dataset("fashion-mnist", split="train", search_dirs=dirs)
    test = load_dataset("fashion-mnist", split="test", search_dirs=dirs)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.x.shape[1:] == (1, 28, 28)
    assert train.num_classes == 10
    assert set(train.y.unique().tolist()) == set(range(10))
    assert abs(float(train.x.mean())) < 0.01
    assert abs(float(train.x.std()) - 1.0) < 0.01


@pytest.mark.skipif(os.environ.get("CI") != "true",
                    reason="only CI (make test as root) promises a run without the dataset")
def test_ci_runs_the_tests_without_the_machines_dataset() -> None:
    """make test hides Debian's Fashion-MNIST folder, so CI proves a fresh machine passes."""
    assert not any(DEBIAN_FASHION_MNIST_DIR.glob("*"))


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100"])
def test_missing_data_raises_one_line_naming_the_dirs_and_the_fix(
    tmp_path: Path, name: str
) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(ConfigError) as info:
        load_dataset(name, split="train", search_dirs=dirs)
    message = str(info.value)
    assert "\n" not in message
    assert f"{dirs[0]}, {dirs[1]}" in message
    assert f"profl data fetch {name}" in message


def test_corrupted_cifar_folder_raises_config_error(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(ConfigError, match="incomplete or corrupted"):
        load_dataset("cifar10", split="test", search_dirs=[tmp_path])


def test_unknown_dataset_name_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="fashion-mnist, cifar10, cifar100, synthetic"):
        load_dataset("mnist", split="train", search_dirs=[])
