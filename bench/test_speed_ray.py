"""Ray backend speed (pytest-benchmark; not part of ``make test``): round time and start-up.

Setup: 100 clients on Fashion-MNIST (IID, 600 samples each), 20 per round, full-model FedAvg on
``cnn`` at width 0.25 with 1 local epoch (the full-width model and 5 epochs take minutes per
round on a shared 2-core machine), batch 64. Measured:

* ``local``: one round with the in-process backend (torch with 1 thread, like the actors);
* ``ray``: one round on a local Ray with 2 CPUs (2 actors, 1 torch thread each);
* ``ray_startup``: ``ray.init`` plus starting the actors with their data partitions.

Run: ``.venv/bin/python -m pytest bench/test_speed_ray.py --benchmark-only`` (Fashion-MNIST
must be installed; see ``make data``). The local/Ray ratio is in ``extra_info``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from bench.paths import data_search_dirs
from profl_core.data import load_dataset, partition
from profl_core.devices import Device, Fleet
from profl_core.errors import ConfigError
from profl_core.fl import FederatedData, LocalBackend, client_seed
from profl_core.fl.client import ClientJob
from profl_core.fl.local import LocalConfig
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.models import build_model, native_spec

ray = pytest.importorskip("ray")
from profl_core.fl.ray_backend import RayBackend  # noqa: E402

CLIENTS, PER_ROUND = 100, 20
FLEET = Fleet("bench", tuple(Device(device_id=i, budget_bytes=1 << 40) for i in range(CLIENTS)))
TABLE = {"full": 0}
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup() -> tuple[FedAvg, Any, FederatedData, list[ClientJob]]:
    try:
        train = load_dataset("fashion-mnist", split="train", search_dirs=data_search_dirs(None))
    except ConfigError as err:
        pytest.skip(str(err))
    parts = partition("iid", train.y.numpy(), CLIENTS, np.random.default_rng(0))
    data = FederatedData(clients=tuple(train.subset(p) for p in parts), test=train.subset([0]))
    method = FedAvg(FedAvgConfig(rounds=1, per_round=PER_ROUND, local_epochs=1, batch_size=64))
    model = build_model(native_spec("cnn", width=0.25), generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    state = method.init_state(model, rng)
    tasks = method.configure_round(1, state, FLEET, TABLE, rng)
    jobs = [ClientJob(task=t, seed=client_seed(0, 1, t.client_id)) for t in tasks]
    return method, state, data, jobs


def test_round_local(benchmark: Any, setup: Any) -> None:
    method, state, data, jobs = setup
    backend = LocalBackend()
    backend.start(method, data, LocalConfig())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark.pedantic(backend.run_round, args=(method, state, jobs), rounds=2, iterations=1)
    finally:
        torch.set_num_threads(threads)
    TIMES["local"] = benchmark.stats.stats.mean


def test_round_ray(benchmark: Any, setup: Any) -> None:
    method, state, data, jobs = setup
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    backend = RayBackend()
    try:
        backend.start(method, data, LocalConfig())
        startup = time.perf_counter() - t0
        backend.run_round(method, state, jobs)  # warm-up: first method/state transfer
        benchmark.pedantic(backend.run_round, args=(method, state, jobs), rounds=2, iterations=1)
    finally:
        backend.close()
        ray.shutdown()
    ray_s = benchmark.stats.stats.mean
    benchmark.extra_info["ray_startup_s"] = startup
    if "local" in TIMES:
        benchmark.extra_info["local_over_ray"] = TIMES["local"] / ray_s
    print(f"\nray start-up {startup:.1f} s; round local {TIMES.get('local', float('nan')):.2f} s,"
          f" ray {ray_s:.2f} s")
