"""The composition check: a model's blocks, run in order, must give its forward.

:func:`verify` builds a torchvision or user model (or a regrouped zoo model) with its
:data:`Builder` and checks that ``head(block_T(...block_1(x)))`` equals ``model(x)``
(``torch.allclose``) on a small real input in eval mode, and that the output is
``(batch, num_classes)``. Glue code between modules in a forward (``torch.flatten(x, 1)``) is
not a module and breaks that: put an ``nn.Flatten`` in the model, or return a BlockedModel.
Every error is one line naming the model string and what is wrong with it; a forward that
takes more than one input is refused as such (the measured step feeds one image batch).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from profl_core.errors import ConfigError
from profl_core.models.base import BlockedModel, ModelSpec, on_meta
from profl_core.models.external import one_line
from profl_core.models.wrapper import ExternalModel

#: Samples of the real input the composition check runs (eval mode, so batch norm is fine).
CHECK_BATCH = 2
#: ``torch.allclose`` tolerances of the composition check: the same kernels on the same input
#: give identical results; the slack only absorbs a different but equivalent reduction order.
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5

Builder = Callable[[ModelSpec], "tuple[BlockedModel, nn.Module]"]
"""Builds a model for a spec: the BlockedModel and the module whose forward it must equal."""


def _required_inputs(module: nn.Module) -> list[str]:
    """The names of the arguments ``module``'s forward cannot run without (none when its
    signature cannot be read)."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


#: The atom chains whose composition check passed, with their spec (no blocks) and builder.
_COMPOSED: set[tuple[ModelSpec, Builder, tuple[str, ...]]] = set()


@functools.cache
def verify(spec: ModelSpec, builder: Builder) -> None:
    """Check once per ``(spec, builder)`` that the builder's blocks compose to the model's
    forward.

    Builds the model on the CPU from a private seed (outside any fake mode and whatever the
    default device), runs the reference module and the blocks-then-head on one random batch of
    :data:`CHECK_BATCH` samples in eval mode, compares them with ``torch.allclose`` and builds
    the output module of step 1 (every stand-in). The global RNG is not touched.

    The check builds and runs a whole model on the CPU, and every ``build_model`` of the spec
    asks for it (a memory suite builds the same spec for every case, on the meta device and
    for real), so passing checks are remembered for the life of the process:
    ``functools.cache`` on the ``(spec, builder)`` pair (both hashable;
    :func:`profl_core.models.build_model` picks the builder from the spec, so this is one entry
    per spec). A failing check raises and is not remembered. ``verify.cache_clear()`` forgets
    the specs (not the atom chains below); ``verify.__wrapped__`` is the check without it.

    A partition whose blocks run the same modules in the same order as one that passed (the
    same :func:`~profl_core.models.wrapper.atoms`: only the block boundaries differ, as
    between the partitions the planner measures) computes the same function, so it is not run
    again on the CPU: the model is built on the meta device to read its atoms, and only its
    stand-ins' shapes are checked.

    Raises:
        ConfigError: naming the model string and what is wrong.
    """
    built = _meta_build(spec, builder)
    key = None if built is None else (replace(spec, blocks=(), identity_standins=False),
                                      builder, sum(built.atoms, ()))
    if built is not None and key in _COMPOSED:
        built.check_stand_ins()
        return
    _check(spec, builder)
    if key is not None:
        _COMPOSED.add(key)


def _meta_build(spec: ModelSpec, builder: Builder) -> ExternalModel | None:
    """The model built on the meta device when it is an :class:`ExternalModel` with known
    atoms, else None (also when building it there fails: the CPU check says why)."""
    try:
        with on_meta(), torch.random.fork_rng(devices=[]):
            model, _ = builder(spec)
    except Exception:  # user code; the check on the CPU reports it
        return None
    return model if isinstance(model, ExternalModel) and model.atoms else None


def _check(spec: ModelSpec, builder: Builder) -> None:
    """:func:`verify`'s check on the CPU."""
    name = spec.name
    shape = "x".join(map(str, (CHECK_BATCH, *spec.input_shape)))
    with unset_fake_temporarily(), torch.device("cpu"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, reference = builder(spec)
        model.eval()
        reference.eval()
        dtype = next(model.parameters()).dtype
        x = torch.randn((CHECK_BATCH, *spec.input_shape),
                        generator=torch.Generator().manual_seed(0), dtype=dtype)
        with torch.no_grad():
            try:
                expected = reference(x)
            except Exception as err:  # user code
                inputs = _required_inputs(reference)
                if len(inputs) > 1:
                    raise ConfigError(
                        f"model {name!r}: its forward takes {len(inputs)} inputs "
                        f"({', '.join(inputs)}); profl measures single-input models "
                        "(forward(x) on one image batch): wrap it in a module whose forward "
                        "takes one tensor") from None
                raise ConfigError(f"model {name!r}: its forward failed on a {shape} input "
                                  f"({one_line(err)}); make it take that input (the dataset's "
                                  "images in profl train; --in-channels and --input-size in "
                                  "the other commands)") from None
            if not isinstance(expected, Tensor):
                raise ConfigError(f"model {name!r}: its forward returned a "
                                  f"{type(expected).__name__}, not a Tensor of logits")
            want = (CHECK_BATCH, spec.num_classes)
            if tuple(expected.shape) != want:
                raise ConfigError(f"model {name!r}: output shape {tuple(expected.shape)} on a "
                                  f"{shape} input, not (batch, classes) = {want}; set "
                                  "--num-classes or fix the head")
            h = x
            for i, part in enumerate([*model.block_names(), "head"]):
                module = model.head if part == "head" else model.block(i)
                try:
                    h = module(h)
                except Exception as err:  # user code
                    raise ConfigError(
                        f"model {name!r}: the blocks do not compose to its forward: {part} "
                        f"failed on the output of the group before it ({one_line(err)}); "
                        "list the modules in forward order with no glue code between "
                        "them") from None
            if not isinstance(h, Tensor) or h.shape != expected.shape:
                got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ConfigError(f"model {name!r}: the blocks do not compose to its forward: "
                                  f"blocks then head give {got}, the forward "
                                  f"{tuple(expected.shape)}")
            if not torch.allclose(h, expected, rtol=CHECK_RTOL, atol=CHECK_ATOL):
                diff = float((h - expected).abs().max())
                raise ConfigError(f"model {name!r}: the blocks do not compose to its forward "
                                  f"(max abs diff {diff:.3g} on a {shape} input in eval "
                                  "mode); list every module the forward runs, in order, with "
                                  "no glue code between them")
        model.output_module(1)  # every stand-in can be built
