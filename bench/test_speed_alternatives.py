"""Time side of the single-device alternatives (issue 14 item 3; pytest-benchmark).

Run with ``profl speed -k alternatives`` or ``pytest bench/test_speed_alternatives.py``.

One client step (:class:`~profl_core.fl.local.LocalStep`, real CPU tensors, the step the
memory tables measure) of every memory kind, on every model of the default suite's memory
section (the zoo on its native input, torchvision's mobilenet_v3_small and mobilenet_v2 at
3x32x32) at batch 64 on one intra-op thread: the plain full step, gradient accumulation
(``full+accum:4``, ``full+accum:8``), activation checkpointing (``full+ckpt``,
``full+ckpt+accum:4``), bf16 autocast (``full+amp``), every ProFL growing step (``grow:t``) and
with 4 micro-batches (``grow:t+accum:4``), the width-0.5 model (HeteroFL's and AllSmall's
level 0.5; only on models that take a width) and DepthFL's depth-2 client (``depth:2``). Each
is reported as a ratio of means to the plain full step of the same model measured in the same
run (``extra_info["ratio_to"]``, which ``profl speed`` turns into rows of ``speed.md``);
nothing is asserted. Memory saved against time paid: the memory side is the ``alternatives``
table of the memory section.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from profl_core.errors import ConfigError
from profl_core.memory import build_step, case_from_text
from profl_core.memory.case import num_blocks
from profl_core.memory.step import PreparedStep
from profl_core.methods.width import level_spec
from profl_core.models import native_spec

pytestmark = pytest.mark.benchmark(group="alternatives")
BATCH = 64
MODELS = ("cnn", "resnet18", "resnet34", "vgg11", "vgg16", "vit",
          "torchvision:mobilenet_v3_small", "torchvision:mobilenet_v2")
ROUNDS = 3


def takes_width(model: str) -> bool:
    """Whether ``model`` builds at width 0.5 (torchvision's MobileNetV3 takes no width)."""
    try:
        num_blocks(level_spec(native_spec(model), 0.5))
    except ConfigError:
        return False
    return True


def kinds(model: str) -> list[str]:
    """The case texts timed for ``model`` (``width:0.5`` is the full case at width 0.5)."""
    blocks = range(1, num_blocks(native_spec(model)) + 1)
    return ["full", "full+accum:4", "full+accum:8", "full+ckpt", "full+ckpt+accum:4",
            "full+amp", *[f"grow:{t}" for t in blocks], *[f"grow:{t}+accum:4" for t in blocks],
            *(["width:0.5"] if takes_width(model) else []), "depth:2"]


def prepared_step(model: str, kind: str) -> PreparedStep:
    """The client step of ``kind``, warmed up (optimizer state and kernel caches exist)."""
    spec = native_spec(model)
    if kind.startswith("width:"):
        spec, kind = level_spec(spec, float(kind.split(":")[1])), "full"
    prepared = build_step(case_from_text(spec, kind, batch_size=BATCH),
                          generator=torch.Generator().manual_seed(0))
    prepared.run()
    return prepared


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: ratios that hold on a shared machine (two threads on two busy
    cores time the thread hand-offs of the small micro-batch ops, not the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("model", "kind"), [(m, k) for m in MODELS for k in kinds(m)])
def test_step_time(benchmark: Any, model: str, kind: str) -> None:
    prepared = prepared_step(model, kind)
    benchmark.pedantic(prepared.run, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info["model"] = model
    benchmark.extra_info["kind"] = kind
    if kind != "full":
        benchmark.extra_info["ratio_to"] = f"test_step_time[{model}-full]"
        benchmark.extra_info["label"] = f"{model} {kind} step / full step (time)"
