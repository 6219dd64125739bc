"""Datasets as in-memory tensors: Fashion-MNIST, CIFAR-10/100 and learnable synthetic data.

The library never decides where data lives: callers pass the folders to search, in order
(the CLI builds that list from ``--data-dir``, ``$PROFL_DATA_DIR`` and the Debian folder; see
DESIGN.md §6). Files are read with torchvision's readers; nothing is downloaded except by
:func:`fetch_dataset`.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from profl_core.errors import ConfigError

DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "synthetic")
"""The dataset names :func:`load_dataset` accepts."""

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four idx files."""

# Per-channel mean and std of the training split, on pixels scaled to [0, 1].
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_NUM_CLASSES = {"fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "synthetic": 10}

_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

_FASHION_PREFIX = {"train": "train", "test": "t10k"}

# The built-in synthetic dataset: fixed seed and sizes, so train and test share class means.
_SYNTHETIC_SEED = 0
_SYNTHETIC_SIZES = {"train": 2048, "test": 512}
_SYNTHETIC_SHAPE = (1, 28, 28)

_FETCH_HINT = "run `profl data fetch {name} --data-dir DIR` or pass --data-dir"


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled image dataset held in memory.

    Attributes:
        x: float32 images, ``N x C x H x W``, normalized with the dataset's per-channel
            mean and std.
        y: int64 labels, shape ``N``, in ``[0, num_classes)``.
        num_classes: Number of classes.
        name: Dataset name (one of :data:`DATASET_NAMES`, possibly with a split suffix).
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ConfigError(f"dataset {self.name}: x must be N x C x H x W, got {self.x.shape}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ConfigError(
                f"dataset {self.name}: y must hold one label per image "
                f"({self.x.shape[0]}), got shape {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one sample, ``(C, H, W)``."""
        c, h, w = self.x.shape[1:]
        return (int(c), int(h), int(w))

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ArrayDataset:
        """The samples at ``indices``, in that order, as a new dataset.

        Args:
            indices: Integer sample indices (a list, a NumPy array or a tensor).

        Returns:
            A dataset with the same ``num_classes`` and ``name``.
        """
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArrayDataset(self.x[index], self.y[index], self.num_classes, self.name)


def check_dataset_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is one of :data:`DATASET_NAMES`."""
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; use one of: {', '.join(DATASET_NAMES)}")


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ConfigError(f"split {split!r}: use 'train' or 'test'")


def _normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 ``N x C x H x W`` → float32 scaled to [0, 1] and standardized per channel."""
    mean, std = _STATS[name]
    x = images.to(torch.float32).div_(255.0)
    x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    return x


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (uncompressed first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = _FASHION_PREFIX[split]
    for candidate in (folder, folder / "FashionMNIST" / "raw"):
        images = _idx_file(candidate, f"{prefix}-images-idx3-ubyte")
        labels = _idx_file(candidate, f"{prefix}-labels-idx1-ubyte")
        if images is not None and labels is not None:
            return images, labels
    return None


def _cifar_folder(folder: Path, name: str) -> Path | None:
    candidate = folder / _CIFAR_FOLDERS[name]
    return candidate if candidate.is_dir() else None


def _not_found(name: str, search_dirs: Sequence[Path]) -> ConfigError:
    searched = ", ".join(str(d) for d in search_dirs) or "no folders"
    if name == "fashion-mnist":
        fix = (
            "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or "
            + _FETCH_HINT.format(name=name)
        )
        what = "fashion-mnist (train/t10k idx files, optionally .gz, or FashionMNIST/raw/)"
    else:
        fix = _FETCH_HINT.format(name=name) + f" to a folder holding {_CIFAR_FOLDERS[name]}/"
        what = f"{name} ({_CIFAR_FOLDERS[name]}/)"
    return ConfigError(f"{what} not found in {searched}; {fix}")


def locate_dataset(
    name: str, *, search_dirs: Sequence[Path], split: Literal["train", "test"] = "train"
) -> Path:
    """The first folder in ``search_dirs`` that holds ``name``'s files for ``split``.

    Args:
        name: A file-backed dataset: ``fashion-mnist``, ``cifar10`` or ``cifar100``.
        search_dirs: Folders to look in, in order; missing folders are skipped.
        split: Which split must be present (Fashion-MNIST keeps splits in separate files).

    Returns:
        The folder that holds the data (for Fashion-MNIST, the folder with the idx files).

    Raises:
        ConfigError: Unknown name, ``synthetic`` (it has no files) or the data is missing.
    """
    check_dataset_name(name)
    _check_split(split)
    if name == "synthetic":
        raise ConfigError("dataset 'synthetic' is generated in memory; it has no files to locate")
    for folder in map(Path, search_dirs):
        if name == "fashion-mnist":
            files = _fashion_files(folder, split)
            if files is not None:
                return files[0].parent
        else:
            found = _cifar_folder(folder, name)
            if found is not None:
                return found
    raise _not_found(name, search_dirs)


def _read_idx(path: Path, reader_name: str) -> torch.Tensor:
    """Read one idx file with torchvision's reader, decompressing ``.gz`` to a temp file first.

    torchvision's ``read_image_file``/``read_label_file`` open plain files only, so gzip
    files are inflated into a private temporary folder that is removed afterwards.
    """
    from torchvision.datasets import mnist

    reader = getattr(mnist, reader_name)
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="profl-idx-") as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as src, plain.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            return reader(str(plain))
    except (OSError, EOFError, AssertionError, TypeError, ValueError) as err:
        raise ConfigError(
            f"{path}: not a readable idx file ({type(err).__name__}); "
            "delete it and fetch the data again"
        ) from err


def _load_fashion(folder: Path, split: str) -> ArrayDataset:
    files = _fashion_files(folder, split)
    if files is None:  # pragma: no cover - locate_dataset found it a moment ago
        raise _not_found("fashion-mnist", [folder])
    images = _read_idx(files[0], "read_image_file")
    labels = _read_idx(files[1], "read_label_file")
    if images.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"{files[0].parent}: {images.shape[0]} images but {labels.shape[0]} labels; "
            "delete the files and fetch the data again"
        )
    x = _normalize(images.unsqueeze(1), "fashion-mnist")
    return ArrayDataset(x, labels.to(torch.int64), _NUM_CLASSES["fashion-mnist"], "fashion-mnist")


def _load_cifar(folder: Path, name: str, split: str) -> ArrayDataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        ds = cls(str(folder.parent), train=split == "train", download=False)
    except RuntimeError as err:
        raise ConfigError(
            f"{folder}: {name} files are incomplete or corrupted; delete the folder and "
            f"run `profl data fetch {name} --data-dir {folder.parent}`"
        ) from err
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
    x = _normalize(images, name)
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    return ArrayDataset(x, y, _NUM_CLASSES[name], name)


def _builtin_synthetic(split: str) -> ArrayDataset:
    generator = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    n_train, n_test = _SYNTHETIC_SIZES["train"], _SYNTHETIC_SIZES["test"]
    both = synthetic_dataset(
        num_samples=n_train + n_test,
        input_shape=_SYNTHETIC_SHAPE,
        num_classes=_NUM_CLASSES["synthetic"],
        generator=generator,
    )
    index = np.arange(n_train) if split == "train" else np.arange(n_train, n_train + n_test)
    return both.subset(index)


def load_dataset(
    name: str, *, split: Literal["train", "test"], search_dirs: Sequence[Path]
) -> ArrayDataset:
    """Load one split of a dataset from the first folder in ``search_dirs`` that holds it.

    Fashion-MNIST: the four idx files (``.gz`` or not) directly in a folder, or in
    ``<folder>/FashionMNIST/raw/`` (torchvision's layout). CIFAR-10/100: torchvision's
    python layout, ``<folder>/cifar-10-batches-py`` or ``<folder>/cifar-100-python``.
    ``synthetic`` is generated from a fixed seed (2048 train / 512 test, 1x28x28, 10
    classes; both splits share the class means) and ignores ``search_dirs``.

    Args:
        name: One of :data:`DATASET_NAMES`.
        split: ``"train"`` or ``"test"``.
        search_dirs: Folders to look in, in order; missing folders are skipped.

    Returns:
        The split as an :class:`ArrayDataset`, normalized per channel.

    Raises:
        ConfigError: Unknown name or split, missing or unreadable data.
    """
    check_dataset_name(name)
    _check_split(split)
    if name == "synthetic":
        return _builtin_synthetic(split)
    folder = locate_dataset(name, search_dirs=search_dirs, split=split)
    if name == "fashion-mnist":
        return _load_fashion(folder, split)
    return _load_cifar(folder, name, split)


def fetch_dataset(name: str, root: Path) -> Path:
    """Download a dataset with torchvision into ``root`` (network needed).

    Args:
        name: ``fashion-mnist``, ``cifar10`` or ``cifar100``.
        root: Folder to download into; created if missing.

    Returns:
        The folder :func:`load_dataset` will find when given ``root`` as a search dir.

    Raises:
        ConfigError: Unknown name, ``synthetic``, or the download failed.
    """
    check_dataset_name(name)
    if name == "synthetic":
        raise ConfigError("dataset 'synthetic' is generated in memory; there is nothing to fetch")
    from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cls = {"fashion-mnist": FashionMNIST, "cifar10": CIFAR10, "cifar100": CIFAR100}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except (OSError, RuntimeError) as err:
        raise ConfigError(
            f"downloading {name} into {root} failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); check the network or "
            "copy the files there by hand"
        ) from err
    if name == "fashion-mnist":
        return root / "FashionMNIST" / "raw"
    return root / _CIFAR_FOLDERS[name]


def synthetic_dataset(
    *,
    num_samples: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
    generator: torch.Generator,
    noise: float = 1.0,
) -> ArrayDataset:
    """Learnable random data: each class is a fixed random mean image plus Gaussian noise.

    Class means are drawn from ``generator`` first (standard normal), then the labels (a
    random permutation of a round-robin assignment, so class sizes differ by at most one),
    then the noise. The result depends only on the generator's state.

    Args:
        num_samples: Number of samples ``N`` (>= 1).
        input_shape: ``(C, H, W)`` of one sample.
        num_classes: Number of classes (>= 2).
        generator: Source of all randomness.
        noise: Standard deviation of the per-sample noise (>= 0).

    Returns:
        An :class:`ArrayDataset` named ``synthetic``.

    Raises:
        ConfigError: A non-positive size, a bad shape or negative noise.
    """
    if num_samples < 1:
        raise ConfigError(f"synthetic num_samples={num_samples}: use a positive number")
    if num_classes < 2:
        raise ConfigError(f"synthetic num_classes={num_classes}: use at least 2 classes")
    if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
        raise ConfigError(f"synthetic input_shape={input_shape}: use three positive ints (C, H, W)")
    if noise < 0:
        raise ConfigError(f"synthetic noise={noise}: use a value >= 0")
    shape = tuple(int(s) for s in input_shape)
    means = torch.randn((num_classes, *shape), generator=generator)
    order = torch.randperm(num_samples, generator=generator)
    y = (torch.arange(num_samples) % num_classes)[order].to(torch.int64)
    x = means[y] + noise * torch.randn((num_samples, *shape), generator=generator)
    return ArrayDataset(x.to(torch.float32), y, num_classes, "synthetic")
