"""``profl models``: the model-zoo table (blocks, parameters, activations, output shapes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.zoo import render, write_zoo, zoo_table
from profl_core.models import MODEL_NAMES

NAME = "models"
HELP = "print the model-zoo table: per block parameters, activation elements and output shape"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", help="model name (repeatable; default: all)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--out", type=Path, help="folder for model_zoo.md and model_zoo.csv")


def run(args: argparse.Namespace) -> int:
    table = zoo_table(args.model or list(MODEL_NAMES), args.num_classes)
    print(render(table))
    if args.out:
        for path in write_zoo(table, args.out):
            print(f"wrote {path}")
    return 0
