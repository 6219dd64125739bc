"""Datasets (Fashion-MNIST, CIFAR-10/100, synthetic) and client partitioners."""

from profl_core.data.datasets import (
    DATASET_NAMES,
    DEBIAN_FASHION_MNIST_DIR,
    ArrayDataset,
    check_dataset_name,
    fetch_dataset,
    load_dataset,
    locate_dataset,
    synthetic_dataset,
)
from profl_core.data.partition import (
    PARTITION_HELP,
    client_summary,
    dirichlet,
    iid,
    label_skew,
    partition,
    shards,
)

__all__ = [
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "PARTITION_HELP",
    "ArrayDataset",
    "check_dataset_name",
    "client_summary",
    "dirichlet",
    "fetch_dataset",
    "iid",
    "label_skew",
    "load_dataset",
    "locate_dataset",
    "partition",
    "shards",
    "synthetic_dataset",
]
