"""InclusiveFL as DepthFL's authors re-implemented it for CNNs: a depth-k client trains only
its deepest exit.

Paper: Ruixuan Liu et al., "No One Left Behind: Inclusive Federated Learning over Heterogeneous
Devices", KDD 2022, arXiv 2202.08036 (the original is Transformer-only, with momentum
distillation). This is the CNN variant the DepthFL authors ran as their InclusiveFL baseline
(``feddyn=false kd=false extended=false``, reference/baselines.md §5.6 and §6).

Everything is DepthFL (:mod:`profl_core.methods.depthfl`: the multi-exit global model, depths
assigned by measured memory, per-tensor mean over holders) except local training: a depth-k
client holds blocks 1..k and **only** exit k (ProFL's output module of block k; the head for
k = T) and trains them with cross-entropy. Memory-table entries are ``trunc:k`` (those modules,
cross-entropy, at the run's batch size). The recorded accuracy is the global model's last exit
(the head after block T); ``round_metrics`` adds every exit's accuracy when test data is given.

Choices that differ from the original: no momentum distillation for the top layer of smaller
models (the original's code applies it only while the stored momentum is still 0, and DepthFL's
re-implementation drops it); per-tensor mean over holders (the original weights by sample
share and excludes each group's top layer from cross-group averaging); the suite's common SGD
optimizer instead of AdamW.
"""

from __future__ import annotations

from profl_core.fl.types import ClientTask, ServerState, SubModel
from profl_core.methods.depthfl import DepthFL, DepthFLConfig, multi_exit
from profl_core.models.exits import exit_name

InclusiveFLConfig = DepthFLConfig


class InclusiveFL(DepthFL):
    """InclusiveFL (DepthFL's CNN re-implementation)."""

    name = "inclusivefl"
    kind = "trunc"

    def module_names(self, k: int, blocks: int) -> list[str]:
        """Blocks 1..k and the exit after block k."""
        return [*(f"block{i}" for i in range(1, k + 1)), exit_name(k, blocks)]

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """Blocks 1..k then exit k, trained with cross-entropy."""
        structure = multi_exit(state)
        names = self.module_names(self._k(task.submodel, structure.blocks), structure.blocks)
        net = structure.loaded(state.weights)
        return SubModel(modules={n: net.get_submodule(n) for n in names}, prefix=(),
                        student=tuple(names), trainable=frozenset(names))

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The full-depth model through its last exit (the head)."""
        structure = multi_exit(state)
        names = self.module_names(structure.blocks, structure.blocks)
        net = structure.loaded(state.weights)
        return SubModel(modules={n: net.get_submodule(n) for n in names}, prefix=(),
                        student=tuple(names))
