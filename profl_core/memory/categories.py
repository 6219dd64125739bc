"""The memory categories every probe reports bytes in (DESIGN §3).

The taxonomy follows PyTorch's ``MemTracker`` plus a frozen-parameter category, because ProFL's
claim is exactly that a frozen block costs its parameter bytes and nothing else.
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
