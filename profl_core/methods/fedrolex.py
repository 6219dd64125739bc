"""FedRolex: HeteroFL with a rolling channel window.

Paper: Samiul Alam, Luyang Liu, Ming Yan, Mi Zhang, "FedRolex: Model-Heterogeneous Federated
Learning with Rolling Sub-Model Extraction", NeurIPS 2022, arXiv 2212.01548. Details:
``reference/baselines.md`` §3.

Everything is HeteroFL (:mod:`profl_core.methods.heterofl`: levels, memory-fitted assignment,
static BN, Scaler, masked classifier, element-wise count-mean aggregation) except *which*
channels a narrow client holds. In round t (1-based) a layer with ``K`` channels gives a
width-``beta`` client the cyclic window

    S(t) = {k, k+1, .., k + ceil(beta K) - 1} mod K,   k = (t - 1) mod K,

so the window moves by one channel per round and wraps around; over ``K`` rounds every channel
is trained equally often (the authors' ``torch.roll`` by ``round mod K``; the direction does not
matter). Linked dimensions use the same window because it depends only on ``(K, ceil(beta K))``.

Choices that differ from the paper: the suite's fixed (*fix* mode) memory-fitted assignment
instead of the authors' per-round random (*dynamic*) rates; SGD lr 0.01 (the README's 2e-4 is
suspect, baselines.md §3) with the suite's common optimizer settings; sBN evaluation when client
data is given (the authors' code evaluates with test-batch statistics, which is this method's
behaviour without client data).
"""

from __future__ import annotations

from profl_core.methods.heterofl import HeteroFL, HeteroFLConfig
from profl_core.methods.width import IndexRule, rolling_indices

FedRolexConfig = HeteroFLConfig


class FedRolex(HeteroFL):
    """FedRolex as a :class:`~profl_core.fl.types.Method`: HeteroFL with a rolling window."""

    name = "fedrolex"

    def channel_rule(self, rounds_done: int) -> IndexRule:
        """The window of round ``rounds_done + 1`` starts at channel ``rounds_done mod K``."""
        return rolling_indices(rounds_done)
