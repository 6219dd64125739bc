"""One reusable copy of each module a method hands to its clients.

A method builds a client's sub-model from its template modules and the round's weights. A
deep copy of the template per client costs more than the load (about 10 ms per client for
``cnn`` at width 0.25, 7% of a ``fedavg-fit`` run's client training on one CPU thread); a client
trains its sub-model in place and returns clones of its state
(:func:`~profl_core.fl.training.train_client`), so the next client of the same process can take
the same copy, loaded with the weights it is given. Every value a client sees comes from
``load_state_dict`` with ``strict=True`` (parameters and persistent buffers, all of them), and
gradients are dropped, so the sub-model equals a fresh copy.

A cache belongs to the run structure that a method's ``init_state`` builds
(:attr:`~profl_core.fl.types.ServerState.structure`), so every ``init_state`` starts with no
copies (the memory probes build each case after its own ``init_state``, so they never reuse a
copy). Not pickled: a Ray worker keeps its own copies.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import Tensor, nn


class ModuleCache:
    """Copies of template modules by name, reloaded on every use."""

    def __init__(self) -> None:
        self._copies: dict[str, nn.Module] = {}

    def loaded(self, name: str, template: nn.Module, weights: Mapping[str, Tensor]) -> nn.Module:
        """The copy of ``template`` kept under ``name`` (a deep copy the first time), loaded
        with ``weights`` (its full state dict, ``strict``) and without gradients."""
        module = self._copies.get(name)
        if module is None:
            module = self._copies[name] = copy.deepcopy(template)
        for param in module.parameters():
            param.grad = None
        module.load_state_dict(weights)
        return module

    def load_named(self, container: nn.Module, names: list[str],
                   weights: Mapping[str, Tensor]) -> dict[str, nn.Module]:
        """:meth:`loaded` copies of the submodules ``names`` of ``container``, each loaded
        with the entries of ``weights`` under its name (``<name>.<key>``), by name."""
        return {name: self.loaded(name, container.get_submodule(name),
                                  {k[len(name) + 1:]: v for k, v in weights.items()
                                   if k.startswith(name + ".")})
                for name in names}

    def __getstate__(self) -> dict[str, object]:
        return {"_copies": {}}
