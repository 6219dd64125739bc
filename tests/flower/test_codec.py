"""What a Flower message carries comes back unchanged: tasks, method, meta, tensors; and a
node's budget comes from its node config before the fleet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from tiny_flower import FLEET

from profl_core.errors import ConfigError
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_flower import BUDGET_KEY, node_budget
from profl_flower.codec import (
    from_arrays,
    meta_from_bytes,
    meta_to_bytes,
    method_spec,
    method_to_json,
    task_from_json,
    task_to_json,
    to_arrays,
)


def context(**node_config: object) -> Context:
    """A node's context with ``node_config``."""
    return Context(run_id=1, node_id=7, node_config=dict(node_config), state=RecordDict(),
                   run_config={})


def test_a_task_comes_back_equal() -> None:
    """Module sets, optional fields and step options survive the JSON text."""
    method = ProFL(ProFLConfig(rounds=3, batch_size=8))
    task = method.config.task(2, "grow:2", frozenset({"block2", "om2"}), 1234, loss="kd",
                              temperature=2.0, bn_update=frozenset({"block1"}),
                              micro_batches=2, autocast="bfloat16")
    assert task_from_json(task_to_json(task)) == task


def test_an_unknown_task_key_is_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        task_from_json('{"client_id": 0, "colour": "red"}')


def test_the_method_comes_back_with_its_config() -> None:
    method = ProFL(ProFLConfig(rounds=3, per_round=2, em_window=5))
    assert method_spec(method_to_json(method)) == ("profl", method.config)


def test_meta_comes_back_equal() -> None:
    meta = {"phase": 2, "last_em": None, "history": [0.5, 0.25], "name": "grow:2",
            "sample": torch.arange(4)}
    back = meta_from_bytes(meta_to_bytes(meta))
    assert back.keys() == meta.keys()
    assert torch.equal(back["sample"], meta["sample"])
    assert {k: v for k, v in back.items() if k != "sample"} == \
        {k: v for k, v in meta.items() if k != "sample"}


def test_tensors_come_back_bit_exact() -> None:
    """Floats, integers and 0-d tensors keep their dtype, shape and values."""
    tensors = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
               "n": torch.tensor(7), "i": torch.arange(5, dtype=torch.int32),
               "d": torch.tensor([np.pi], dtype=torch.float64)}
    back = from_arrays(to_arrays(tensors))
    assert list(back) == list(tensors)
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())


def test_the_node_config_budget_comes_before_the_fleet() -> None:
    assert node_budget(context(**{"partition-id": 3}), FLEET) == FLEET.devices[3].budget_bytes
    assert node_budget(context(**{"partition-id": 3, BUDGET_KEY: 5}), FLEET) == 5
    assert node_budget(context(**{"partition-id": 3})) is None


def test_a_bad_budget_is_one_line() -> None:
    with pytest.raises(ConfigError, match=f"{BUDGET_KEY}=-1"):
        node_budget(context(**{BUDGET_KEY: -1}), FLEET)
