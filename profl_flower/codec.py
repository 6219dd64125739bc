"""What travels in a Flower message, and back: a client task, the method, the server meta and
name-keyed tensors.

Settings are plain values in a :class:`~flwr.app.ConfigRecord` (JSON text for the nested
ones: a task's module sets and sub-steps, a method's config), tensors an
:class:`~flwr.app.ArrayRecord` (bit-exact: NumPy bytes of the same dtype), and the server's
``meta`` the bytes of ``torch.save``, read back with ``torch.load(weights_only=True)`` (numbers,
strings, lists, dicts and tensors only: nothing is unpickled).
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, get_type_hints

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor

from profl_core.errors import ConfigError
from profl_core.fl.method import Method
from profl_core.fl.types import ClientTask
from profl_core.methods.registry import method_info

_HINTS = get_type_hints(ClientTask)


def task_to_json(task: ClientTask) -> str:
    """``task`` as JSON text (module sets as sorted lists, sub-steps as nested objects)."""
    return json.dumps(_task_dict(task), sort_keys=True)


def _task_dict(task: ClientTask) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(task):
        value = getattr(task, f.name)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = [_task_dict(v) for v in value]
        out[f.name] = value
    return out


def task_from_json(text: str) -> ClientTask:
    """The :class:`ClientTask` of :func:`task_to_json`'s text; a ConfigError names a bad key."""
    return _task_from_dict(json.loads(text))


def _task_from_dict(data: Mapping[str, Any]) -> ClientTask:
    names = {f.name for f in fields(ClientTask)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"flower message task: unknown key(s) {unknown}; the server and the "
                          "client run different profl-bench versions: install the same one")
    values: dict[str, Any] = {}
    for key, value in data.items():
        hint = str(_HINTS[key])
        if hint.startswith("frozenset"):
            value = frozenset(value)
        elif hint.startswith("tuple"):
            value = tuple(_task_from_dict(v) for v in value)
        values[key] = value
    return ClientTask(**values)


def method_to_json(method: Method) -> str:
    """The method's registry name and config as JSON text (the client builds the same one)."""
    return json.dumps({"name": method.name, "config": asdict(method.config)}, sort_keys=True)


def method_spec(text: str) -> tuple[str, Any]:
    """``(name, config)`` of :func:`method_to_json`'s text, the config built by the registry."""
    spec = json.loads(text)
    info = method_info(spec["name"])
    return info.name, info.config_class.from_dict(spec["config"])


def meta_to_bytes(meta: Mapping[str, Any]) -> bytes:
    """The server state's ``meta`` as ``torch.save`` bytes."""
    buffer = io.BytesIO()
    torch.save(dict(meta), buffer)
    return buffer.getvalue()


def meta_from_bytes(data: bytes) -> dict[str, Any]:
    """The ``meta`` of :func:`meta_to_bytes` (``weights_only``: plain values and tensors)."""
    return torch.load(io.BytesIO(data), weights_only=True)


def to_arrays(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """Name-keyed tensors as an ArrayRecord (same order, dtype and bytes)."""
    return ArrayRecord(OrderedDict((k, Array(v.detach().cpu().contiguous().numpy()))
                                   for k, v in tensors.items()))


def from_arrays(record: ArrayRecord) -> dict[str, Tensor]:
    """The name-keyed tensors of an ArrayRecord (copies, so they are writable)."""
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}
