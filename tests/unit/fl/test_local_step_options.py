"""The client step's options: gradient accumulation, activation checkpointing, autocast.

Oracles: a plain PyTorch full-batch ``autograd.grad`` (accumulation), the same step without
the option (checkpointing, BN running statistics), parameter and gradient dtypes (autocast).
Gradients are read in the step itself, after backward and before the optimizer, through the
observer callback ``before_optimizer``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from profl_core.data import ArrayDataset
from profl_core.errors import ConfigError
from profl_core.fl.local import LocalConfig, LocalStep
from profl_core.fl.observer import StepObserver
from profl_core.fl.step_options import micro_batches
from profl_core.fl.training import feature_cache, train_client
from profl_core.fl.types import ClientTask, SubModel
from profl_core.memory.case_text import case_from_text
from profl_core.memory.step import build_step

#: float32 sums in another order: what accumulation may change in a gradient.
ATOL, RTOL = 1e-6, 1e-5


class GradCapture(StepObserver):
    """Copies every trainable gradient when backward is done (before the optimizer)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.grads: list[Tensor] = []

    def before_optimizer(self) -> None:
        self.grads = [p.grad.detach().clone() for p in self.params if p.grad is not None]


def mlp_modules(seed: int = 0) -> dict[str, nn.Module]:
    """A BN-free two-module MLP on 3x2x2 inputs: ``a`` (flatten, 12 -> 16, ReLU), ``b``
    (16 -> 5)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = nn.Linear(12, 16), nn.Linear(16, 5)
    with torch.no_grad():
        for p in [*a.parameters(), *b.parameters()]:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return {"a": nn.Sequential(nn.Flatten(), a, nn.ReLU()), "b": b}


def mlp_task(**options: object) -> ClientTask:
    return ClientTask(client_id=0, submodel="full", trainable=frozenset({"a", "b"}),
                      required_bytes=0, batch_size=10, local_epochs=1, **options)  # type: ignore[arg-type]


def mlp_step(**options: object) -> LocalStep:
    modules = mlp_modules()
    sub = SubModel(modules=modules, prefix=(), student=("a", "b"),
                   trainable=frozenset(modules))
    return LocalStep.build(sub, mlp_task(**options), LocalConfig())


def batch(n: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 2, 2, generator=gen), torch.randint(0, 5, (n,), generator=gen)


def full_batch_grads(x: Tensor, y: Tensor) -> list[Tensor]:
    """The oracle: one plain forward of the whole batch, mean cross-entropy, autograd.grad."""
    modules = mlp_modules()
    params = [p for m in modules.values() for p in m.parameters()]
    loss = F.cross_entropy(modules["b"](modules["a"](x)), y)
    return list(torch.autograd.grad(loss, params))


def step_grads(step: LocalStep, x: Tensor, y: Tensor) -> list[Tensor]:
    capture = GradCapture(step.trainable_parameters())
    step.run(x, y, observer=capture)
    return capture.grads


@pytest.mark.parametrize(("n", "k"), [(8, 1), (8, 2), (8, 4), (8, 8), (10, 4), (3, 4)])
def test_accumulated_gradient_is_the_full_batch_gradient(n: int, k: int) -> None:
    """Also when k does not divide the batch (10 = 3+3+2+2) or exceeds it (3 micro-batches)."""
    x, y = batch(n)
    expected = full_batch_grads(x, y)
    got = step_grads(mlp_step(micro_batches=k), x, y)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=ATOL, rtol=RTOL)


def test_accumulated_step_returns_the_full_batch_mean_loss() -> None:
    x, y = batch(10)
    modules = mlp_modules()
    expected = F.cross_entropy(modules["b"](modules["a"](x)), y).detach()
    assert torch.allclose(mlp_step(micro_batches=4).run(x, y), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("n", "k", "sizes"), [(10, 4, [3, 3, 2, 2]), (3, 4, [1, 1, 1]),
                                               (8, 1, [8])])
def test_micro_batch_sizes_differ_by_at_most_one(n: int, k: int, sizes: list[int]) -> None:
    x, y = batch(n)
    assert [xb.shape[0] for xb, _ in micro_batches(x, y, k)] == sizes


def test_micro_batches_are_views_of_the_batch() -> None:
    x, y = batch(8)
    parts = micro_batches(x, y, 4)
    assert all(xb.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
               for xb, _ in parts)


def cnn_step(text: str, batch_size: int = 8) -> tuple[LocalStep, Tensor, Tensor | None]:
    prepared = build_step(case_from_text("cnn", text, batch_size=batch_size))
    return prepared.step, prepared.inputs, prepared.labels


def test_checkpointed_step_has_the_plain_step_gradients() -> None:
    """cnn full (batch norm in train mode in every block): the recompute changes nothing."""
    plain, x, y = cnn_step("full")
    ckpt, _, _ = cnn_step("full+ckpt")
    for g, e in zip(step_grads(ckpt, x, y), step_grads(plain, x, y), strict=True):
        assert torch.allclose(g, e, atol=ATOL, rtol=RTOL)


def bn_buffers(step: LocalStep) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in step.sub.state().items()
            if "running" in k or "num_batches" in k}


def test_checkpoint_recompute_leaves_bn_running_stats_as_the_plain_step() -> None:
    plain, x, y = cnn_step("full")
    ckpt, _, _ = cnn_step("full+ckpt")
    plain.run(x, y)
    ckpt.run(x, y)
    expected, got = bn_buffers(plain), bn_buffers(ckpt)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_checkpoint_restores_the_modules_forward_after_the_step() -> None:
    ckpt, x, y = cnn_step("full+ckpt")
    ckpt.run(x, y)
    assert all("forward" not in vars(m) for m in ckpt.sub.modules.values())


def test_checkpointed_grow_step_checkpoints_only_trainable_modules() -> None:
    """grow:2: the frozen block1 runs under no_grad; block2 and om2 are recomputed."""
    plain, x, y = cnn_step("grow:2")
    ckpt, _, _ = cnn_step("grow:2+ckpt")
    for g, e in zip(step_grads(ckpt, x, y), step_grads(plain, x, y), strict=True):
        assert torch.allclose(g, e, atol=ATOL, rtol=RTOL)


class DtypeSeen(StepObserver):
    def __init__(self) -> None:
        self.dtypes: dict[str, torch.dtype] = {}

    def after_block(self, name: str, output: Tensor) -> None:
        self.dtypes[name] = output.dtype


def test_bf16_autocast_runs_the_blocks_in_bf16() -> None:
    amp, x, y = cnn_step("full+amp")
    seen = DtypeSeen()
    amp.run(x, y, observer=seen)
    assert seen.dtypes["block1"] == torch.bfloat16


def test_bf16_autocast_keeps_fp32_master_weights() -> None:
    amp, x, y = cnn_step("full+amp")
    amp.run(x, y)
    assert {p.dtype for p in amp.trainable_parameters()} == {torch.float32}


def test_bf16_autocast_keeps_fp32_gradients() -> None:
    amp, x, y = cnn_step("full+amp")
    assert {g.dtype for g in step_grads(amp, x, y)} == {torch.float32}


def test_fp16_autocast_scales_the_loss_with_a_grad_scaler() -> None:
    amp, x, y = cnn_step("full+amp:fp16")
    amp.run(x, y)
    assert amp.scaler is not None
    assert {p.dtype for p in amp.trainable_parameters()} == {torch.float32}


def test_fp16_step_updates_the_weights() -> None:
    amp, x, y = cnn_step("full+amp:fp16")
    before = [p.detach().clone() for p in amp.trainable_parameters()]
    amp.run(x, y)
    assert any(not torch.equal(b, p) for b, p in zip(before, amp.trainable_parameters(),
                                                      strict=True))


@pytest.mark.parametrize(("field", "value"), [("micro_batches", 0), ("micro_batches", True),
                                              ("checkpoint", 1), ("autocast", "int8")])
def test_bad_step_options_are_one_line_config_errors(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        mlp_task(**{field: value})
    assert field in str(err.value)
    assert "\n" not in str(err.value)


def mlp_client(seed: int = 2) -> tuple[SubModel, ArrayDataset]:
    modules = mlp_modules()
    sub = SubModel(modules=modules, prefix=("a",), student=("b",), trainable=frozenset({"b"}))
    gen = torch.Generator().manual_seed(seed)
    data = ArrayDataset(x=torch.randn(40, 3, 2, 2, generator=gen),
                        y=torch.randint(0, 5, (40,), generator=gen), num_classes=5, name="toy")
    return sub, data


def trained(micro: int, *, cache: bool, frozen: bool = False) -> dict[str, Tensor]:
    sub, data = mlp_client()
    if not frozen:
        sub = SubModel(modules=sub.modules, prefix=(), student=("a", "b"),
                       trainable=frozenset({"a", "b"}))
    task = ClientTask(client_id=0, submodel="full", trainable=sub.trainable, required_bytes=0,
                      batch_size=8, local_epochs=2, micro_batches=micro)
    update = train_client(copy.deepcopy(sub), data, task,
                          generator=torch.Generator().manual_seed(3),
                          config=LocalConfig(feature_cache=cache))
    return dict(update.state)


def test_train_client_with_two_micro_batches_matches_one() -> None:
    """A BN-free model, 2 epochs of 5 batches: the same weights within float tolerance."""
    expected, got = trained(1, cache=False), trained(2, cache=False)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=ATOL, rtol=RTOL), key


def test_feature_cache_feeds_micro_batches_of_cached_features() -> None:
    """Frozen prefix ``a``, cached or not: the same weights with micro-batches."""
    expected = trained(4, cache=False, frozen=True)
    got = trained(4, cache=True, frozen=True)
    for key, value in expected.items():
        assert torch.allclose(got[key], value, atol=ATOL, rtol=RTOL), key


def test_that_client_caches_its_prefix_features() -> None:
    """The client of the test above does use the cache (a frozen prefix, no budget)."""
    sub, data = mlp_client()
    task = ClientTask(client_id=0, submodel="full", trainable=sub.trainable, required_bytes=0,
                      batch_size=8, micro_batches=4)
    cached = feature_cache(sub, data, task, LocalConfig(), torch.device("cpu"))
    assert cached is not None
    assert cached.shape == (40, 16)
