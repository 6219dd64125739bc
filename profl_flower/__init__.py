"""The suite's methods in Flower (``pip install 'profl-bench[flower]'``): a memory-aware
:class:`~profl_flower.strategy.MethodStrategy` for any registered method and a ``ClientApp``
that runs the suite's own client step with its budget check (``docs/flower.md``).

The library (``profl_core``) never imports Flower; this package sits beside it.
"""

from profl_flower.client import BUDGET_KEY, NodeSetup, make_client_app, node_budget, partition_id
from profl_flower.strategy import MethodStrategy, RoundLog

__all__ = ["BUDGET_KEY", "MethodStrategy", "NodeSetup", "RoundLog", "make_client_app",
           "node_budget", "partition_id"]
