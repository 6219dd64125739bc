"""Checkpoints of the round loop: the server state's weights and meta, the NumPy RNG and the
loop's own state, written atomically and read back with ``torch.load(weights_only=True)``.

The state's ``structure`` is not saved: the resumed run's ``init_state`` builds it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from profl_core.files import Fields, atomic_save, fail, load_torch, shown
from profl_core.fl.method import Method
from profl_core.fl.types import ServerState

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def save_checkpoint(
    path: Path, rnd: int, state: ServerState, method: str, np_rng: np.random.Generator,
    *, loop: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (temp file + ``os.replace``).

    Client shuffling needs no state: its seeds derive from (seed, round, client id). ``loop``
    is the round loop's own state (the divergence rule's reference loss).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "method": method,
        "round": rnd,
        "weights": state.weights,
        "meta": state.meta,
        "numpy_rng": np_rng.bit_generator.state,
        "loop": dict(loop or {}),
    }
    atomic_save(path, lambda handle: torch.save(payload, handle))


#: What to do with a checkpoint that cannot be resumed.
CHECKPOINT_FIX = ("start fresh in a new folder, or put back the last good checkpoint.pt (a "
                  "copy from before the damage)")

_CHECKPOINT_KEYS = ("format", "method", "round", "weights", "meta", "numpy_rng", "loop")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its structure.

    Raises:
        ConfigError: One line naming the file, what is wrong and how to recover: a file torch
            cannot read, another format, a missing key or a value of the wrong type.
    """
    payload = load_torch(path, "checkpoint", missing="no checkpoint to resume from",
                         fix=CHECKPOINT_FIX)
    version = payload.get("format") if isinstance(payload, dict) else None
    if type(version) is not int or version != CHECKPOINT_FORMAT:
        fail(path, f"not a checkpoint of format {CHECKPOINT_FORMAT}; {CHECKPOINT_FIX}")
    top = Fields(payload, path, table="dict", fix=CHECKPOINT_FIX)
    top.require(_CHECKPOINT_KEYS)
    top.string("method")
    top.integer("round", "use a round number >= 0", minimum=0)
    weights = top.get("weights")
    if not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        top.bad("weights", "not a name -> tensor dict")
    for key in ("meta", "numpy_rng", "loop"):
        top.mapping(key)
    return payload


def restore_checkpoint(
    path: Path, payload: Mapping[str, Any], *, method: Method, fresh: ServerState,
    np_rng: np.random.Generator, rounds: int,
) -> ServerState:
    """The server state of a checkpoint read by :func:`load_checkpoint`, checked against the
    ``fresh`` state of the run's model and method; sets ``np_rng`` to the saved state.

    Raises:
        ConfigError: The checkpoint is of another method, a later round than the run has,
            lacks or reshapes a tensor of the model (another width or model), holds method
            state this method cannot use, or an RNG state NumPy refuses.
    """
    if payload["method"] != method.name:
        fail(path, f"checkpoint of method {shown(payload['method'])}, not {method.name!r}; "
                   "resume with the method it was started with, or use a new folder")
    if int(payload["round"]) > rounds:
        fail(path, f"checkpoint of round {payload['round']}, but the run has only {rounds} "
                   "rounds; resume with the settings it was started with")
    weights = payload["weights"]
    for key, tensor in fresh.weights.items():
        saved = weights.get(key)
        if saved is None:
            fail(path, f"weights lack {key!r} of this model; {CHECKPOINT_FIX}")
        if saved.shape != tensor.shape or saved.dtype != tensor.dtype:
            fail(path, f"weights[{key!r}] is {saved.dtype} {list(saved.shape)}, this model's "
                       f"is {tensor.dtype} {list(tensor.shape)} (another model or width?); "
                       "resume with the settings it was started with, or use a new folder")
    missing = sorted(set(fresh.meta) - set(payload["meta"]))
    if missing:
        fail(path, f"meta lacks {missing[0]!r} of method {method.name}; {CHECKPOINT_FIX}")
    state = ServerState(weights=dict(weights), meta=dict(payload["meta"]),
                        structure=fresh.structure)
    try:
        np_rng.bit_generator.state = payload["numpy_rng"]
        method.is_finished(state)
        method.position(state)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as err:
        fail(path, f"holds a state {method.name} cannot use ({type(err).__name__}: "
                   f"{shown(str(err))}); {CHECKPOINT_FIX}")
    loop = Fields(payload["loop"], path, "loop", table="dict", fix=CHECKPOINT_FIX)
    if loop.has("step"):
        loop.items("step", "use [stage, step, submodel]")
    if loop.has("reference_loss"):
        loop.number("reference_loss", finite=False)
    return state
