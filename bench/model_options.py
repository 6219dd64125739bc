"""The model flags shared by ``profl trace``, ``profl memory`` and ``profl models``.

``--model`` takes a zoo name, ``torchvision:NAME`` or ``pkg.module:factory``; ``--blocks``,
``--in-channels``, ``--input-size`` and ``--identity-standins`` (and ``--num-classes`` where a
command has no own default) override the model's native spec
(:func:`profl_core.models.native_spec`).
"""

from __future__ import annotations

import argparse
from typing import Any

from profl_core.errors import ConfigError
from profl_core.models import parse_blocks

MODEL_HELP = "zoo name (see `profl models`), torchvision:NAME or pkg.module:factory"
BLOCKS_HELP = ("block groups of a torchvision or user model, comma-separated, the last the "
               "head: module names or ranges, e.g. features.0-3,features.4-6,features.7,head")


def add_spec_arguments(parser: argparse.ArgumentParser, *, num_classes: bool = True) -> None:
    """``--blocks``, ``--in-channels``, ``--input-size`` (and ``--num-classes``)."""
    parser.add_argument("--blocks", default=None, help=BLOCKS_HELP)
    if num_classes:
        parser.add_argument("--num-classes", type=int, default=None,
                            help="classifier outputs (default: the model's, 10)")
    parser.add_argument("--in-channels", type=int, default=None,
                        help="input channels (default: the model's, 3; cnn 1)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input height and width (default: the model's, 32; cnn 28)")
    parser.add_argument("--identity-standins", action="store_true",
                        help="ProFL's stand-in for a block that keeps its input's shape is the "
                             "identity (nothing to fit; no activations at that resolution)")


def spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields the flags set (those left out keep the model's native value).

    Raises:
        ConfigError: a malformed ``--blocks`` or a count below its minimum.
    """
    out: dict[str, Any] = {}
    if args.blocks is not None:
        out["blocks"] = parse_blocks(args.blocks, where="--blocks")
    if args.identity_standins:
        out["identity_standins"] = True
    for name, least in (("num_classes", 2), ("in_channels", 1), ("input_size", 1)):
        value = getattr(args, name, None)
        if value is None:
            continue
        if value < least:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value}: use a whole number of {least} or more")
        out[name] = value
    return out
