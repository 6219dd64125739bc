"""Early exits for depth-scaled sub-models (DepthFL, InclusiveFL) and their shared loss.

A depth-k sub-model is blocks ``1..k`` of a :class:`~profl_core.models.BlockedModel` with an
exit (classifier) after each block. The exit after block k is the model's own
:meth:`~profl_core.models.BlockedModel.output_module` for ``k < T`` (one basic stride-2 conv per
missing stage, then pooling and a linear classifier, exactly ProFL's output module) and the
model's ``head`` for ``k == T``. Reusing ProFL's output modules keeps the comparison about the
training scheme, not the exit architecture, and works for every model family; DepthFL's own
exits (SepConv chains with an attention map, "Be Your Own Teacher") are larger: 0.33 M
parameters at exit 1 of ResNet18, 2.2x layer1 (reference/baselines.md §5.1).

Names: the exit after block k is ``exit<k>`` for ``k < T`` and ``head`` for ``k == T``, so a
multi-exit model's state dict is the BlockedModel's plus ``exit<k>.*`` prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from profl_core.models.base import BlockedModel

#: DepthFL's additive constant inside the KL target (``softmax(o_j) + 1e-7``).
KD_EPS = 1e-7


def exit_name(k: int, num_blocks: int) -> str:
    """The module name of the exit after block ``k`` (1-based) of a T-block model."""
    return "head" if k == num_blocks else f"exit{k}"


def build_exit(model: BlockedModel, k: int) -> nn.Module:
    """The exit after block ``k``: the head for ``k == T``, else ``model.output_module(k)``."""
    return model.head if k == model.num_blocks else model.output_module(k)


def add_exits(model: BlockedModel) -> nn.Module:
    """A module holding the model's blocks, its head and fresh exits ``exit1 .. exit<T-1>``.

    The model's own modules are shared, not copied; the new exits are drawn from the current
    (possibly forked and seeded) torch RNG. State dict keys: ``block<i>.*``, ``head.*``,
    ``exit<k>.*``.
    """
    holder = nn.Module()
    for i, name in enumerate(model.block_names()):
        holder.add_module(name, model.block(i))
    holder.add_module("head", model.head)
    for k in range(1, model.num_blocks):
        holder.add_module(exit_name(k, model.num_blocks), model.output_module(k))
    return holder


def mutual_distillation_loss(
    logits: Sequence[Tensor], labels: Tensor, *, kd_weight: float
) -> Tensor:
    """DepthFL's local objective for one batch (Kim et al., ICLR 2023; baselines.md §5.2).

    ``L = sum_i [ CE(o_i, y) + w * 1/(k-1) * sum_{j != i} KL(softmax(o_j).detach() + 1e-7
    || softmax(o_i)) ]`` with temperature 1 and the KL averaged over the batch. With one exit
    (k = 1) it is plain cross-entropy.

    Args:
        logits: ``o_1 .. o_k``, one ``(batch, classes)`` tensor per exit.
        labels: Class labels ``(batch,)``.
        kd_weight: ``w``; 0 gives the sum of the exits' cross-entropies.
    """
    k = len(logits)
    targets = [F.softmax(o.detach(), dim=1) + KD_EPS for o in logits] if k > 1 else []
    total = logits[0].new_zeros(())
    for i, o_i in enumerate(logits):
        total = total + F.cross_entropy(o_i, labels)
        if k == 1:
            continue
        log_p = F.log_softmax(o_i, dim=1)
        kd = o_i.new_zeros(())
        for j, target in enumerate(targets):
            if j != i:
                kd = kd + (target * (torch.log(target) - log_p)).sum(dim=1).mean()
        total = total + kd_weight * kd / (k - 1)
    return total


#: Default softmax temperature of ProFL's basic-layer fit (``ProFLConfig.distill_temperature``,
#: and the ``shrink:t`` memory cases).
DISTILL_TEMPERATURE = 2.0


def soft_target_loss(student: Tensor, teacher: Tensor, *, temperature: float) -> Tensor:
    """Knowledge distillation (Hinton et al. 2015): ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Averaged over the batch. Its gradient with respect to the student logits is
    ``T * (softmax(s/T) - softmax(t/T)) / batch``: bounded whatever the logits' scale, which is
    why ProFL's basic-layer fit uses it instead of the logit MSE (docs/training.md).
    """
    log_p = F.log_softmax(student / temperature, dim=1)
    log_q = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return kl * temperature * temperature
