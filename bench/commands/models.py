"""``profl models``: the model-zoo table (blocks, parameters, activations, output shapes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.model_options import MODEL_HELP, add_spec_arguments, spec_overrides
from bench.zoo import render, write_zoo, zoo_table
from profl_core.errors import ConfigError
from profl_core.models import MODEL_NAMES

NAME = "models"
HELP = "print the model-zoo table: per block parameters, activation elements and output shape"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append",
                        help=f"{MODEL_HELP} (repeatable; default: the zoo)")
    parser.add_argument("--num-classes", type=int, default=10)
    add_spec_arguments(parser, num_classes=False)
    parser.add_argument("--out", type=Path, help="folder for model_zoo.md and model_zoo.csv")


def run(args: argparse.Namespace) -> int:
    models = args.model or list(MODEL_NAMES)
    overrides = spec_overrides(args)
    if "blocks" in overrides and len(models) != 1:
        raise ConfigError(f"--blocks applies to one model; give one --model, not {len(models)}")
    table = zoo_table(models, args.num_classes, overrides)
    print(render(table))
    if args.out:
        for path in write_zoo(table, args.out):
            print(f"wrote {path}")
    return 0
