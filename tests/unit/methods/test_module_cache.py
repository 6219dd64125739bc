"""Methods reuse one copy of their modules across clients: the same training as fresh copies."""

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from profl_core.data import synthetic_dataset
from profl_core.fl.local import LocalConfig
from profl_core.fl.training import train_client
from profl_core.fl.types import ServerState
from profl_core.methods.depthfl import DepthFL, DepthFLConfig
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.module_cache import ModuleCache
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec

SPEC = native_spec("cnn", width=0.25, num_classes=4, input_size=8)
COMMON = {"rounds": 4, "per_round": 2, "local_epochs": 1, "batch_size": 8, "lr": 0.05}
METHODS = {
    "fedavg": lambda: FedAvg(FedAvgConfig(**COMMON)),
    "depthfl": lambda: DepthFL(DepthFLConfig(**COMMON)),
    "profl": lambda: ProFL(ProFLConfig(**COMMON)),
}


def test_a_reused_copy_holds_the_new_weights_and_no_gradients() -> None:
    """The second ``loaded`` returns the same module, loaded with the weights it is given."""
    cache = ModuleCache()
    template = nn.Linear(3, 2)
    first = cache.loaded("lin", template, template.state_dict())
    first.weight.grad = torch.ones_like(first.weight)
    weights = {"weight": torch.full((2, 3), 0.5), "bias": torch.full((2,), -1.0)}
    second = cache.loaded("lin", template, weights)
    assert second is first
    assert second is not template
    assert torch.equal(second.weight, weights["weight"])
    assert torch.equal(second.bias, weights["bias"])
    assert second.weight.grad is None


def test_a_pickled_cache_holds_no_copies() -> None:
    """A Ray worker gets the method without the driver's copies and builds its own: a new
    template under the same name is copied, where a carried-over copy of the old one (other
    shapes) would refuse the new weights."""
    cache = ModuleCache()
    old = nn.Linear(3, 2)
    cache.loaded("lin", old, old.state_dict())
    clone = pickle.loads(pickle.dumps(cache))
    new = nn.Linear(5, 4)
    module = clone.loaded("lin", new, new.state_dict())
    assert module.weight.shape == (4, 5)
    assert torch.equal(module.weight, new.weight)


def _train(method, state: ServerState, client: int, data) -> dict[str, torch.Tensor]:
    task = replace(next(iter(method.memory_plan(state).values())), client_id=client)
    sub = method.submodel(state, task)
    update = train_client(sub, data, task, generator=torch.Generator().manual_seed(client),
                          config=LocalConfig())
    return update.state


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_client_on_a_reused_copy_trains_exactly_as_on_a_fresh_one(name: str) -> None:
    """Client 2 after client 1 in one method instance (its copies reused) returns the update
    a fresh instance gives it (a fresh deep copy): ``torch.equal`` for every tensor."""
    data = synthetic_dataset(num_samples=24, input_shape=SPEC.input_shape, num_classes=4,
                             generator=torch.Generator().manual_seed(3))
    model = build_model(SPEC, generator=torch.Generator().manual_seed(0))
    reused = METHODS[name]()
    state = reused.init_state(model, np.random.default_rng(0))
    _train(reused, state, 1, data)
    after_reuse = _train(reused, state, 2, data)
    fresh = METHODS[name]()
    fresh_state = fresh.init_state(model, np.random.default_rng(0))
    expected = _train(fresh, fresh_state, 2, data)
    assert after_reuse.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(after_reuse[key], value), key
