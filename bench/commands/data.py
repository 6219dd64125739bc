"""``profl data``: find, fetch and partition datasets.

``profl data show`` says where a dataset was found and how big it is, ``profl data fetch``
downloads one with torchvision, ``profl data partition`` prints a client label histogram and
the label skew of a partition spec. The lookup order (DESIGN.md §6) is built here, since only
the harness may read the environment and the working directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tabulate import tabulate

from bench.paths import data_search_dirs
from profl_core.data import (
    DATASET_NAMES,
    client_summary,
    fetch_dataset,
    label_skew,
    load_dataset,
    locate_dataset,
    partition,
)

NAME = "data"
HELP = "datasets: show where they are, fetch them, and summarize client partitions"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    show = actions.add_parser("show", help="where a dataset was found and its sizes")
    show.add_argument(
        "--dataset", default="fashion-mnist", help="one of: " + ", ".join(DATASET_NAMES)
    )
    show.add_argument("--data-dir", type=Path, help="folder searched before the defaults")

    fetch = actions.add_parser("fetch", help="download a dataset with torchvision")
    fetch.add_argument("name", help="fashion-mnist, cifar10 or cifar100")
    fetch.add_argument("--data-dir", type=Path, required=True, help="folder to download into")

    part = actions.add_parser("partition", help="client label histogram and label skew")
    part.add_argument(
        "--dataset", default="fashion-mnist", help="one of: " + ", ".join(DATASET_NAMES)
    )
    part.add_argument("--data-dir", type=Path, help="folder searched before the defaults")
    part.add_argument("--clients", type=int, required=True, help="number of clients")
    part.add_argument("--partition", default="iid", help="iid, dirichlet:ALPHA or shards:K")
    part.add_argument("--seed", type=int, default=0, help="partition seed")
    part.add_argument("--head", type=int, default=10, help="client rows to print")


def _show(args: argparse.Namespace) -> int:
    dirs = data_search_dirs(args.data_dir)
    if args.dataset == "synthetic":
        print("synthetic: generated in memory from a fixed seed (no files)")
    else:
        where = locate_dataset(args.dataset, search_dirs=dirs)
        print(f"{args.dataset}: found in {where}")
    rows = []
    for split in ("train", "test"):
        ds = load_dataset(args.dataset, split=split, search_dirs=dirs)
        rows.append(
            {
                "split": split,
                "samples": len(ds),
                "shape": "x".join(map(str, ds.input_shape)),
                "classes": ds.num_classes,
            }
        )
    print(tabulate(rows, headers="keys", tablefmt="github", intfmt=","))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    folder = fetch_dataset(args.name, args.data_dir)
    print(f"{args.name}: downloaded to {folder}")
    return 0


def _partition(args: argparse.Namespace) -> int:
    ds = load_dataset(args.dataset, split="train", search_dirs=data_search_dirs(args.data_dir))
    labels = ds.y.numpy()
    parts = partition(args.partition, labels, args.clients, np.random.default_rng(args.seed))
    table = client_summary(labels, parts, ds.num_classes)
    print(
        f"{args.dataset} train, {args.clients} clients, partition {args.partition}, "
        f"seed {args.seed}"
    )
    print(
        tabulate(table.head(max(args.head, 0)), headers="keys", tablefmt="github", showindex=False)
    )
    print(
        f"label skew (mean TV distance to the global label mix): "
        f"{label_skew(labels, parts, ds.num_classes):.4f}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {"show": _show, "fetch": _fetch, "partition": _partition}
    return handlers[args.action](args)
