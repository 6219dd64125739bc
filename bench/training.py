"""One federated training run from a :class:`~bench.run_settings.TrainingConfig`, shared by
``profl train`` and suites.

:func:`check_inputs` reads and checks every file the settings name (devices folder, fleet,
partition plan) before any work; :func:`run_training` then loads the data (or takes it
ready), partitions it, builds the method, its memory table and the fleet, runs
:func:`~profl_core.fl.run_federated` and writes into one folder: ``run.json`` (first: the
full resolved configuration and the code version), ``rounds.jsonl``, ``checkpoint.pt``,
``model.pt``, ``result.json`` (summary records read back from ``rounds.jsonl``),
``learning_curve.png``, ``effective_movement.png`` (ProFL's runs: EM per step,
:func:`~bench.plots.em_figure`) and ``README.txt``. ``result.json`` is written last, so its
presence marks a finished run; ``resume=True`` continues an unfinished one from its
checkpoint and ends with the weights of an uninterrupted run. Resuming is a contract
(:func:`bench.run_files.check_resume`): a setting that would change the result is refused,
naming it, before any work.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.paths import CHECKOUT, data_search_dirs, fleet_path, profiles_dir
from bench.planning import read_plan
from bench.plots import em_figure, em_panels, has_em, plot_curve
from bench.run_files import RUN_FILE, check_resume, read_rounds, run_record
from bench.run_settings import TrainingConfig, check_device, make_method, run_config
from bench.run_summary import step_summary, summary_records
from profl_core.data import ArrayDataset, load_dataset, partition
from profl_core.devices import DeviceProfile, Fleet, load_fleet, load_profiles
from profl_core.errors import ConfigError
from profl_core.files import atomic_write_text, read_json
from profl_core.fl import DivergedError, FederatedData, JsonlSink, RoundRecord, run_federated
from profl_core.fl.loop import CHECKPOINT_NAME, load_checkpoint, restore_checkpoint
from profl_core.fl.method import Method
from profl_core.memory import TrainingCase
from profl_core.memory.table import method_table, required_bytes_table
from profl_core.methods.profl import ProFLConfig
from profl_core.models import ModelSpec, build_model, native_spec, parse_blocks
from profl_core.results import ResultFile, new_result, write_result

MIB = 2**20


# ------------------------------------------------------------------------------------ building


def load_data(config: TrainingConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test split of ``config.dataset``."""
    dirs = data_search_dirs(config.data_dir)
    return (
        load_dataset(config.dataset, split="train", search_dirs=dirs),
        load_dataset(config.dataset, split="test", search_dirs=dirs),
    )


def federated_data(
    config: TrainingConfig, train: ArrayDataset, test: ArrayDataset
) -> FederatedData:
    """Partition ``train`` over the clients (capped per client) and cap the test set."""
    parts = partition(config.partition, train.y.numpy(), config.clients,
                      np.random.default_rng(config.seed))
    if config.samples_per_client:
        cap_rng = np.random.default_rng([config.seed, 1])
        parts = [np.sort(cap_rng.choice(p, config.samples_per_client, replace=False))
                 if len(p) > config.samples_per_client else p for p in parts]
    if config.test_samples and config.test_samples < len(test):
        test = test.subset(np.arange(config.test_samples))
    return FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)


def model_spec(config: TrainingConfig, train: ArrayDataset) -> ModelSpec:
    """The model on the dataset's input shape and classes."""
    c, h, w = train.input_shape
    if h != w:
        raise ConfigError(f"dataset {config.dataset}: {h}x{w} images; models need square inputs")
    blocks = parse_blocks(config.blocks, where="blocks") if config.blocks else ()
    identity = config.identity_standins
    if config.partition_plan is not None:
        blocks, planned_identity = read_plan(config.partition_plan, config.model)
        identity = identity or planned_identity
    return native_spec(config.model, num_classes=train.num_classes, in_channels=c,
                       input_size=h, width=config.width, blocks=blocks,
                       identity_standins=identity)


def memory_table(spec: ModelSpec, config: TrainingConfig, method: Method,
                 plans: Path | None = None) -> dict[str, int]:
    """Required bytes of every sub-model ``method`` hands out (its memory plan), predicted on
    the client steps its clients run: the heap peak (live tensors plus kernel scratch) at this
    process's torch thread count, the count the clients train with.

    The table is computed once per process for each method, settings, model, batch size and
    thread count, and with ``plans`` (a suite run folder's ``plans/``) once per suite: see
    :func:`shared_table`.
    """
    return shared_table(spec, config, method, plans)[0]


#: Where a run's memory table came from (``memory_table_from`` in its ``result.json``):
#: predicted by the run, this process's earlier prediction, or a suite's ``plans/`` file.
TABLE_SOURCES = ("predicted", "process", "shared")

#: A suite run folder's folder of memory tables shared by its runs (:func:`shared_table`).
PLANS_DIR = "plans"


def table_key(spec: ModelSpec, config: TrainingConfig, method: Method) -> tuple[Any, ...]:
    """What determines a method's memory table in this process: the method and its settings,
    the model, the batch size, the frozen-BN setting and the torch thread count."""
    return (method.name, method.config, spec, config.batch_size, config.frozen_bn,
            torch.get_num_threads())


def _canonical(value: Any) -> Any:
    """``value`` as JSON data that is the same in every process (sets sorted: their order
    follows the per-process string hash)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__,
                **{f.name: _canonical(getattr(value, f.name))
                   for f in dataclasses.fields(value)}}
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def plan_digest(key: tuple[Any, ...]) -> str:
    """The file name stem of a memory table in ``plans/``: a hash of :func:`table_key`, the
    torch version and the CPU capability torch dispatches to (the heap's kernel scratch
    depends on both)."""
    text = json.dumps([_canonical(key), torch.__version__,
                       torch.backends.cpu.get_cpu_capability()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def shared_table(spec: ModelSpec, config: TrainingConfig, method: Method,
                 plans: Path | None = None) -> tuple[dict[str, int], str]:
    """:func:`memory_table` and where it came from (:data:`TABLE_SOURCES`).

    With ``plans``, the table is the file ``plans/<digest>.json`` (:func:`plan_digest`) when
    it exists; else this process predicts it and writes the file, holding
    ``plans/<digest>.lock`` meanwhile, so the runs of a suite, its worker processes and a
    ``--resume`` share one prediction. The file holds the very integers predicted (the
    same table byte for byte) and the key it was predicted for, checked on reading.
    """
    key = table_key(spec, config, method)
    if key in _TABLES:
        return dict(_TABLES[key]), "process"
    if plans is None:
        _TABLES[key] = _predict_table(spec, config, method)
        return dict(_TABLES[key]), "predicted"
    plans.mkdir(parents=True, exist_ok=True)
    digest = plan_digest(key)
    path = plans / f"{digest}.json"
    with open(plans / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the process ends, however it ends
        if path.is_file():
            source, table = "shared", _read_plan_file(path, key)
        else:
            start = time.perf_counter()
            source, table = "predicted", _predict_table(spec, config, method)
            atomic_write_text(path, json.dumps({
                "key": _canonical(key), "torch": torch.__version__,
                "predict_s": round(time.perf_counter() - start, 3), "table": table},
                indent=1) + "\n")
    _TABLES[key] = table
    return dict(table), source


def _read_plan_file(path: Path, key: tuple[Any, ...]) -> dict[str, int]:
    """The table of a ``plans/`` file written for ``key``."""
    fix = "delete it (the suite then predicts the table again)"
    data = read_json(path, "memory plan file", missing=fix, fix=fix)
    table = data.get("table") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("key") != _canonical(key) \
            or not isinstance(table, dict) \
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in table.values()):
        raise ConfigError(f"{path}: not the memory table of this run's method and model; {fix}")
    return {str(name): int(v) for name, v in table.items()}


def _predict_table(spec: ModelSpec, config: TrainingConfig, method: Method) -> dict[str, int]:
    reports = method_table(method, spec, batch_size=config.batch_size,
                           frozen_bn=config.frozen_bn)
    return {name: r.required_bytes for name, r in reports.items()}


_TABLES: dict[tuple[Any, ...], dict[str, int]] = {}


def reference_bytes(spec: ModelSpec, config: TrainingConfig) -> int:
    """``required_bytes`` of the full model's FedAvg client step: what relative fleets scale
    to, the same for every method of a comparison."""
    case = TrainingCase(model=spec, kind="full", batch_size=config.batch_size,
                        frozen_bn_eval=config.frozen_bn == "eval")
    return _predicted_bytes(case, torch.get_num_threads())


@functools.lru_cache(maxsize=512)
def _predicted_bytes(case: TrainingCase, threads: int) -> int:
    """``required_bytes`` of one case by the predict probe: the predicted heap peak, kernel
    scratch included, deterministic for one machine and thread count, so the runs of one
    process share it."""
    return required_bytes_table([case], probe="predict")[case.key]


def fleet_inputs(config: TrainingConfig) -> tuple[Path, dict[str, DeviceProfile]]:
    """The fleet file and the device profiles of ``config`` (its devices folder, default the
    shipped one), checked before any work.

    Raises:
        ConfigError: An unknown fleet name or a devices folder without ``profiles/``.
    """
    return fleet_path(config.fleet, config.devices), load_profiles(profiles_dir(config.devices))


def make_fleet(config: TrainingConfig, full_bytes: int) -> Fleet:
    """``clients`` evenly spread devices of the fleet (relative fleets scale to the full peak)."""
    path, profiles = fleet_inputs(config)
    fleet = load_fleet(path, profiles, reference_peak_bytes=full_bytes)
    return fleet.spread(config.clients)


#: Any positive reference peak reads and checks a relative fleet's file (its budgets are
#: fractions of it); the run's own, known once the model is built, scales it for training.
CHECK_REFERENCE_BYTES = 1 << 30


def check_inputs(config: TrainingConfig) -> None:
    """Read and check everything ``config`` names, before any work (the data's loading
    included): the torch device, the devices folder's profiles, the fleet file (and that it
    has ``clients`` devices) and the partition plan.

    Raises:
        ConfigError: The first bad input, naming its file and the fix.
    """
    check_device(config.device)
    path, profiles = fleet_inputs(config)
    load_fleet(path, profiles, reference_peak_bytes=CHECK_REFERENCE_BYTES).spread(config.clients)
    if config.partition_plan is not None:
        read_plan(config.partition_plan, config.model)


# ------------------------------------------------------------------------------------ the run


def em_level(method: Method) -> float | None:
    """The EM level a ProFL step must fall under to end (None: the method has no EM rule, or
    runs the fixed schedule)."""
    config = method.config
    if isinstance(config, ProFLConfig) and config.schedule == "em":
        return config.freeze_rule().em_level
    return None


def run_training(
    config: TrainingConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: Callable[[RoundRecord], None] | None = None,
    data: tuple[ArrayDataset, ArrayDataset] | None = None,
    suite: str | None = None,
    target_accuracy: float | None = None,
    log: Callable[[str], None] | None = None,
    plans: Path | None = None,
) -> ResultFile:
    """Run one federated training into ``out`` and return its result file.

    Args:
        config: The run's settings.
        out: Run folder (created); holds the files listed in the module docstring.
        resume: Continue the run recorded in ``out/run.json`` (from ``out/checkpoint.pt``
            when present), refusing changed settings (:func:`~bench.run_files.check_resume`);
            an empty or missing folder starts fresh. Without it, a folder that already holds a
            run is refused.
        progress: Called with each round's record.
        data: Train and test split already loaded (suites load them once); else loaded here.
        suite: Result-file suite name (default ``train-<method>``).
        target_accuracy: Adds ``rounds_to_target`` to the records.
        log: Receives a few human-readable lines (memory table, final accuracy).
        plans: A suite run folder's ``plans/``: the method's memory table is predicted once
            for every run of the suite that shares it (:func:`shared_table`).

    Returns:
        The result file written to ``out/result.json``.
    """
    def say(line: str) -> None:  # warnings go to stderr, whatever ``log`` is
        print(f"warning: {line}", file=sys.stderr)

    if (out / "rounds.jsonl").exists() and not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume or a new --out")
    check_inputs(config)  # every file it names is read before the data
    resuming = resume and check_resume(config, out, warn=say)
    if not resuming and (out / RUN_FILE).exists():
        raise ConfigError(f"{out} already holds a run; pass --resume or a new --out")
    train, test = data if data is not None else load_data(config)
    spec = model_spec(config, train)
    fed = federated_data(config, train, test)
    method = make_method(config, fed)
    model = build_model(spec, generator=torch.Generator().manual_seed(config.seed))
    fresh = method.init_state(model, np.random.default_rng(config.seed))
    if resuming:  # a bad checkpoint or rounds file fails before any work
        done = 0
        if (out / CHECKPOINT_NAME).is_file():
            payload = load_checkpoint(out / CHECKPOINT_NAME)
            restore_checkpoint(out / CHECKPOINT_NAME, payload, method=method, fresh=fresh,
                               np_rng=np.random.default_rng(), rounds=config.rounds)
            done = int(payload["round"])
        JsonlSink(out / "rounds.jsonl").kept(done)
    table_start = time.perf_counter()
    table, table_from = shared_table(spec, config, method, plans)
    table_s = time.perf_counter() - table_start
    full_bytes = reference_bytes(spec, config)
    fleet = make_fleet(config, full_bytes)
    method.fit_fleet(fresh, fleet, table)  # fail before training when the method fits no device
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        atomic_write_text(out / RUN_FILE, json.dumps(run_record(config), indent=1) + "\n")
    if log is not None:
        for name, required in table.items():
            share = fleet.participation(required)
            log(f"  {name:9s} {required / MIB:8.1f} MiB  eligible {share:.0%}")
    start = time.perf_counter()
    diverged: DivergedError | None = None
    try:
        state = run_federated(
            method, fleet, fed, run_config(config), model=model, memory_table=table,
            sink=JsonlSink(out / "rounds.jsonl"), backend=config.backend, checkpoint_dir=out,
            resume=resuming, progress=progress, warn=say,
        )
    except DivergedError as err:  # checkpoint.pt holds the last finite round
        diverged = err
    else:
        weights = method.model_weights(state)
        torch.save(dict(weights), out / "model.pt")
    wall = time.perf_counter() - start
    rounds = read_rounds(out / "rounds.jsonl")
    key = f"{config.label}/{spec.name}/{config.dataset}/{fleet.name}/{config.partition}" \
          f"/seed{config.seed}"
    extra: dict[str, Any] = {
        "config": config.to_json(), "memory_table_bytes": table, "session_wall_s": wall,
        "memory_table_from": table_from, "memory_table_s": table_s,
        "fleet": fleet.name, "target_accuracy": target_accuracy,
        "status": "completed" if diverged is None else "diverged", "steps": step_summary(rounds),
    }
    if diverged is not None:
        extra["diverged"] = {"round": diverged.round, "stage": diverged.stage,
                             "step": diverged.step, "submodel": diverged.submodel,
                             "what": diverged.what, "message": str(diverged)}
    result = new_result(
        suite or f"train-{config.method}",
        summary_records(rounds, key, full_bytes=full_bytes, target_accuracy=target_accuracy,
                        completed=diverged is None),
        repo=CHECKOUT, extra=extra,
    )
    title = f"{config.method} {spec.name} on {config.dataset}, fleet {fleet.name}"
    plot_curve(rounds, out / "learning_curve.png",
               title if diverged is None else f"{title}: {diverged}")
    if has_em(rounds):
        em_figure(em_panels(rounds, em_level(method)), out / "effective_movement.png",
                  f"{title}: effective movement per step")
    if diverged is None:
        final = result.values("final_accuracy")[key]
        outcome = f"final accuracy {final:.4f} after {len(rounds)} rounds"
    else:
        outcome = f"{diverged} (no accuracy is reported; checkpoint.pt holds round " \
                  f"{diverged.round - 1})"
    atomic_write_text(out / "README.txt", f"{key}\n{outcome}\n")
    write_result(out / "result.json", result)  # last: marks the run as finished
    if log is not None:
        log(f"{outcome} ({wall:.1f} s); wrote {out}")
    return result
