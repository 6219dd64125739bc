"""The memory categories every probe reports bytes in (DESIGN §3).

The taxonomy follows PyTorch's ``MemTracker`` plus a frozen-parameter category, because ProFL's
claim is that a frozen block keeps nothing but its parameters: run under ``no_grad`` it saves
no activations and gets no gradients or optimizer state. That is not the same as costing
nothing at the peak: while its forward runs, its transients (for a ResNet stem, several
full-resolution feature maps alive at once) are ``ACTIVATION`` bytes, and they can set the
step's peak (resnet18 ``grow:3``/``grow:4`` and resnet34 ``grow:4`` at batch 64 peak in
block 1's no-grad forward).

What the categories count: live tensor storages, each once, at their ``nbytes``. What they do
not count: kernel-internal scratch (oneDNN convolution workspaces, reorders), allocator
rounding and caching, Python objects, the CUDA context. The ``heap`` figures of a report
(``heap_peak_bytes``) include the CPU allocator's view of kernel scratch; see
:mod:`profl_core.memory.report`.
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    """What a live storage holds.

    Attributes:
        PARAM_TRAINABLE: parameters with ``requires_grad=True`` in the measured step.
        PARAM_FROZEN: parameters with ``requires_grad=False`` (ProFL's frozen prefix).
        BUFFER: module buffers (batch-norm running statistics).
        GRADIENT: ``.grad`` of trainable parameters.
        OPTIMIZER_STATE: tensors in ``optimizer.state`` (momentum, Adam moments, step counts).
        ACTIVATION: storages created during the forward pass (saved tensors, block outputs,
            transients of frozen blocks, logits and loss).
        TEMPORARY: storages created during backward or the optimizer step that are not
            gradients or optimizer state (input gradients, per-op scratch).
        INPUT: the input batch and its labels.
        OTHER: anything else the tracker saw.
    """

    PARAM_TRAINABLE = "param_trainable"
    PARAM_FROZEN = "param_frozen"
    BUFFER = "buffer"
    GRADIENT = "gradient"
    OPTIMIZER_STATE = "optimizer_state"
    ACTIVATION = "activation"
    TEMPORARY = "temporary"
    INPUT = "input"
    OTHER = "other"
