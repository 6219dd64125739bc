"""Static facts about a model's blocks: parameters, activation elements and output shapes.

``activation elements per sample`` is the sum, over every leaf module of the block, of the
number of elements it outputs for one input sample: the size of the tensors a training step
could keep for the backward pass, before autograd's own choices (in-place ReLU, saved inputs
instead of outputs). It is a static count; measured bytes come from the memory probes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from profl_core.models.base import BlockedModel, meta_copy


@dataclass(frozen=True)
class BlockSummary:
    """One row of the model-zoo table."""

    model: str
    block: str
    params: int
    activation_elements_per_sample: int
    output_shape: tuple[int, ...]


def _leaf_output_elements(module: nn.Module, x: Tensor) -> tuple[int, Tensor]:
    """Run ``module`` on ``x`` and count the elements of every leaf module's output."""
    total = 0

    def hook(_mod: nn.Module, _inp: object, out: object) -> None:
        nonlocal total
        outs = out if isinstance(out, tuple) else (out,)
        total += sum(t.numel() for t in outs if isinstance(t, Tensor))

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [leaf.register_forward_hook(hook) for leaf in leaves]
    try:
        y = module(x)
    finally:
        for handle in handles:
            handle.remove()
    return total, y


#: Samples of the meta-device forward: batch norm in train mode refuses a single value per
#: channel (a 1x1 feature map of one sample, as torchvision's models reach at 32x32).
SUMMARY_BATCH = 2


def summarize_blocks(model: BlockedModel) -> list[BlockSummary]:
    """One :class:`BlockSummary` per block and one for the head, computed on the meta device."""
    rows = []
    with torch.no_grad():
        x = torch.zeros((SUMMARY_BATCH, *model.spec.input_shape), device="meta")
        named = [(name, model.block(i)) for i, name in enumerate(model.block_names())]
        for name, module in [*named, ("head", model.head)]:
            params = sum(p.numel() for p in module.parameters())
            meta = meta_copy(module).train()
            elements, x = _leaf_output_elements(meta, x)
            rows.append(
                BlockSummary(
                    model=model.spec.name,
                    block=name,
                    params=params,
                    activation_elements_per_sample=elements // SUMMARY_BATCH,
                    output_shape=tuple(x.shape[1:]),
                )
            )
    return rows

