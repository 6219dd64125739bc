"""Local training: frozen prefix untouched, partial updates, feature cache is exact."""

import numpy as np
import torch

from profl_core.data import synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.fl.local import LocalConfig
from profl_core.fl.training import train_client
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec


def grow2_setup() -> tuple[ProFL, object, object, object]:
    """A ProFL state and the task for growing step 2 (block1 frozen) on 48 samples."""
    spec = native_spec("cnn", width=0.25, num_classes=4)
    model = build_model(spec, generator=torch.Generator().manual_seed(0))
    method = ProFL(ProFLConfig(rounds=4, shrink=False, schedule="fixed", batch_size=16,
                               local_epochs=2, lr=0.05))
    state = method.init_state(model, np.random.default_rng(0))
    state = method.aggregate(1, state, [])  # grow:1 -> grow:2
    data = synthetic_dataset(num_samples=48, input_shape=(1, 28, 28), num_classes=4,
                             generator=torch.Generator().manual_seed(1))
    table = {f"grow:{t}": 1 for t in range(1, 5)}
    fleet = Fleet("hand", (Device(device_id=0, budget_bytes=1),))
    task = method.configure_round(2, state, fleet, table, np.random.default_rng(0))[0]
    return method, state, task, data


def test_update_holds_only_trainable_entries_and_prefix_is_untouched() -> None:
    """The update has block2 and om2 keys only; block1 (and its BN stats) are unchanged."""
    # Prepare
    method, state, task, data = grow2_setup()
    sub = method.submodel(state, task)
    before = {k: v.clone() for k, v in sub.state(["block1"]).items()}
    # Execute
    update = train_client(sub, data, task, generator=torch.Generator().manual_seed(0),
                          config=LocalConfig())
    # Assert
    assert update.state, "empty update"
    assert all(k.startswith(("block2.", "om2.")) for k in update.state)
    assert any(k.endswith("running_mean") for k in update.state)
    assert all(torch.equal(before[k], v) for k, v in sub.state(["block1"]).items())
    assert update.num_examples == 48
    assert update.metrics["train_loss"] > 0


def test_frozen_bn_train_mode_sends_frozen_buffers() -> None:
    """With the authors' BN behaviour, block1's running stats move and are sent back."""
    method, state, task, data = grow2_setup()
    sub = method.submodel(state, task)
    update = train_client(sub, data, task, generator=torch.Generator().manual_seed(0),
                          config=LocalConfig(frozen_bn="train", feature_cache=False))
    block1 = [k for k in update.state if k.startswith("block1.")]
    assert block1
    assert all("running" in k or "num_batches" in k for k in block1)


def test_feature_cache_gives_identical_weights() -> None:
    """Cached prefix features give bit-identical trained weights."""
    # Prepare
    method, state, task, data = grow2_setup()
    # Execute
    updates = [
        train_client(method.submodel(state, task), data, task,
                     generator=torch.Generator().manual_seed(3),
                     config=LocalConfig(feature_cache=cache))
        for cache in (True, False)
    ]
    # Assert
    assert updates[0].state.keys() == updates[1].state.keys()
    assert all(torch.equal(updates[0].state[k], updates[1].state[k]) for k in updates[0].state)


def test_feature_cache_is_used_only_when_it_fits_next_to_the_step() -> None:
    """cnn block1 at width 0.25 outputs 8 x 28 x 28 floats per sample: 48 samples cache
    48 * 8 * 28 * 28 * 4 = 1,204,224 bytes. A budget 1 byte short of step + cache gets none."""
    from dataclasses import replace

    from profl_core.fl.training import feature_cache

    method, state, task, data = grow2_setup()
    sub = method.submodel(state, task)
    cache_bytes = 48 * 8 * 28 * 28 * 4
    fits = replace(task, required_bytes=1000, budget_bytes=1000 + cache_bytes)
    short = replace(fits, budget_bytes=1000 + cache_bytes - 1)
    cached = feature_cache(sub, data, fits, LocalConfig(), torch.device("cpu"))
    assert cached is not None
    assert cached.numel() * cached.element_size() == cache_bytes
    assert feature_cache(sub, data, short, LocalConfig(), torch.device("cpu")) is None
    assert feature_cache(sub, data, replace(task, budget_bytes=None), LocalConfig(),
                         torch.device("cpu")) is not None
