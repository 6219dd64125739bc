"""What a memory probe returns: :class:`MemoryReport` and its per-block :class:`BlockPeak`.

Two peaks, named for what they count:

* ``tensor_peak_bytes``: the most bytes of live tensor storages (each storage once),
  parameters, buffers, optimizer state and the input batch included. Portable and
  deterministic: the same on every machine and thread count for a CPU step.
* ``heap_peak_bytes``: the most bytes the CPU allocator (c10's) held during the step, on this
  machine at this thread count: the tensor storages *plus* what kernels allocate for
  themselves and free before they return (oneDNN convolution scratch and reorders,
  batch/layer-norm backward buffers, attention workspaces). ``None`` when the probe cannot know
  it. Allocations made before the step (allocator caches, oneDNN primitive caches) beyond the
  step's own tensors are not counted; neither are Python objects or library code.

Sizes are requested bytes (what ``posix_memalign`` is asked for; memray counts the same):
c10's 64-byte alignment and malloc's own headers are not added.

All sizes are ``int`` bytes; convert to MiB only when rendering. Reports round-trip through
JSON (:meth:`MemoryReport.to_json` / :meth:`MemoryReport.from_json`) so they can cross process
boundaries and live in result files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from profl_core.errors import ConfigError
from profl_core.memory.categories import Category

Phase = Literal["forward", "backward", "optimizer"]
PHASES: tuple[str, ...] = ("forward", "backward", "optimizer")


def _breakdown_to_json(breakdown: Mapping[Category, int]) -> dict[str, int]:
    return {str(cat): int(n) for cat, n in breakdown.items()}


def _breakdown_from_json(data: Mapping[str, Any], where: str) -> dict[Category, int]:
    out: dict[Category, int] = {}
    for key, value in data.items():
        try:
            cat = Category(key)
        except ValueError:
            known = ", ".join(c.value for c in Category)
            raise ConfigError(f"{where}: unknown category {key!r}; use one of {known}") from None
        out[cat] = int(value)
    return out


def _check_keys(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    missing = sorted(known - set(data))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {sorted(known)}")
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}; write the report with to_json()")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _at_to_json(at: tuple[str, str] | None) -> list[str] | None:
    return list(at) if at is not None else None


def _at_from_json(data: Any) -> tuple[str, str] | None:
    return (str(data[0]), str(data[1])) if data is not None else None


@dataclass(frozen=True)
class BlockPeak:
    """The highest bytes while one block ran in one phase.

    Attributes:
        block: a module of the client's sub-model, named as in the server's state dict
            (``block2``, ``om2.basic3``, ``om2.head``, ``exit1``, ``head``) or a step segment
            (``loss``, ``optimizer``).
        phase: ``forward``, ``backward`` or ``optimizer``.
        tensor_peak_bytes: absolute live tensor-storage bytes at the segment's peak (the bytes
            held before the step included; see the module doc).
        breakdown: bytes per category at the tensor peak (empty for probes without categories).
        heap_peak_bytes: absolute CPU-allocator bytes at the segment's heap peak, kernel
            scratch and the bytes held before the step included; ``None`` when the probe
            cannot know it.
    """

    block: str
    phase: Phase
    tensor_peak_bytes: int
    breakdown: Mapping[Category, int] = field(default_factory=dict)
    heap_peak_bytes: int | None = None

    @property
    def required_bytes(self) -> int:
        """:attr:`heap_peak_bytes` when known, else :attr:`tensor_peak_bytes`."""
        return self.tensor_peak_bytes if self.heap_peak_bytes is None else self.heap_peak_bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "block": self.block,
            "phase": self.phase,
            "tensor_peak_bytes": int(self.tensor_peak_bytes),
            "heap_peak_bytes": _optional_int(self.heap_peak_bytes),
            "breakdown": _breakdown_to_json(self.breakdown),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockPeak:
        """Inverse of :meth:`to_dict`."""
        known = {"block", "phase", "tensor_peak_bytes", "heap_peak_bytes", "breakdown"}
        _check_keys(data, known, "block peak")
        if data["phase"] not in PHASES:
            raise ConfigError(f"block peak: phase={data['phase']!r}; use one of {PHASES}")
        return cls(
            block=str(data["block"]),
            phase=cast(Phase, data["phase"]),
            tensor_peak_bytes=int(data["tensor_peak_bytes"]),
            heap_peak_bytes=_optional_int(data["heap_peak_bytes"]),
            breakdown=_breakdown_from_json(data["breakdown"], "block peak breakdown"),
        )


@dataclass(frozen=True)
class MemoryReport:
    """The memory of one measured training step (the second one, after a warm-up step).

    Attributes:
        probe: the probe that measured it (``dispatch``, ``predict``, ``heap``, ``cuda``,
            ``rss``).
        device: the device the step ran on (``cpu``, ``cuda:0``).
        case_key: :attr:`profl_core.memory.case.TrainingCase.key` of the measured case.
        before_step_bytes: live tensor bytes before the measured step: parameters, buffers,
            optimizer state and the input batch (0 for ``rss``, whose peak is already a delta).
        tensor_peak_bytes: the most live tensor-storage bytes during the step, those held
            before it included (``dispatch``, ``predict``, ``heap``). ``cuda`` puts the allocator's
            ``max_memory_allocated`` here (512 B rounding and cuDNN workspaces included) and
            ``rss`` the process RSS delta: neither can see storages.
        peak_breakdown: bytes per category at the tensor peak (empty for ``cuda`` and ``rss``).
        peak_at: ``(block, phase)`` of the tensor peak; ``None`` when unknown (``rss``).
        blocks: one :class:`BlockPeak` per (block, phase) segment, in execution order.
        extra: probe-specific integers (reserved bytes, snapshots at phase ends, timings).
        heap_peak_bytes: the most bytes the CPU allocator held during the step, the bytes held
            before it and kernel scratch included, on this machine at :attr:`threads` threads
            (``heap`` measures it, ``predict`` models it); ``None`` when the probe cannot know
            it.
        heap_peak_at: ``(block, phase)`` of the heap peak; ``None`` with no heap figure.
        threads: ``torch.get_num_threads()`` the step ran (or was modelled) with; ``None``
            when the probe does not depend on it.
    """

    probe: str
    device: str
    case_key: str
    before_step_bytes: int
    tensor_peak_bytes: int
    peak_breakdown: Mapping[Category, int] = field(default_factory=dict)
    peak_at: tuple[str, str] | None = None
    blocks: tuple[BlockPeak, ...] = ()
    extra: Mapping[str, int] = field(default_factory=dict)
    heap_peak_bytes: int | None = None
    heap_peak_at: tuple[str, str] | None = None
    threads: int | None = None

    @property
    def required_bytes(self) -> int:
        """The bytes a device needs to train this case: what selection compares with budgets.

        :attr:`heap_peak_bytes` when the probe knows it (``heap``, ``predict``): what the
        allocator must grant, kernel scratch included. Otherwise :attr:`tensor_peak_bytes`:
        for ``dispatch`` the live-tensor peak (a lower bound on the heap: it misses kernel
        scratch), for ``cuda`` the allocator's allocated peak, for ``rss`` the process RSS
        delta over a process holding the built model (see :mod:`profl_core.memory.rss`).
        """
        return self.tensor_peak_bytes if self.heap_peak_bytes is None else self.heap_peak_bytes

    @property
    def step_bytes(self) -> int:
        """Tensor bytes the step adds on top of what was live before it."""
        return self.tensor_peak_bytes - self.before_step_bytes

    @property
    def heap_step_bytes(self) -> int | None:
        """Heap bytes the step adds on top of what was live before it (``None`` if unknown)."""
        if self.heap_peak_bytes is None:
            return None
        return self.heap_peak_bytes - self.before_step_bytes

    def block_peak(self, block: str, phase: str) -> BlockPeak | None:
        """The segment of ``block`` in ``phase``, or ``None`` if it did not run."""
        for peak in self.blocks:
            if peak.block == block and peak.phase == phase:
                return peak
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "probe": self.probe,
            "device": self.device,
            "case_key": self.case_key,
            "before_step_bytes": int(self.before_step_bytes),
            "tensor_peak_bytes": int(self.tensor_peak_bytes),
            "heap_peak_bytes": _optional_int(self.heap_peak_bytes),
            "peak_breakdown": _breakdown_to_json(self.peak_breakdown),
            "peak_at": _at_to_json(self.peak_at),
            "heap_peak_at": _at_to_json(self.heap_peak_at),
            "threads": _optional_int(self.threads),
            "blocks": [b.to_dict() for b in self.blocks],
            "extra": {str(k): int(v) for k, v in self.extra.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryReport:
        """Inverse of :meth:`to_dict`; raises ConfigError on unknown or missing keys."""
        known = {
            "probe", "device", "case_key", "before_step_bytes", "tensor_peak_bytes",
            "heap_peak_bytes", "peak_breakdown", "peak_at", "heap_peak_at", "threads", "blocks",
            "extra",
        }
        _check_keys(data, known, "memory report")
        return cls(
            probe=str(data["probe"]),
            device=str(data["device"]),
            case_key=str(data["case_key"]),
            before_step_bytes=int(data["before_step_bytes"]),
            tensor_peak_bytes=int(data["tensor_peak_bytes"]),
            heap_peak_bytes=_optional_int(data["heap_peak_bytes"]),
            peak_breakdown=_breakdown_from_json(data["peak_breakdown"], "memory report"),
            peak_at=_at_from_json(data["peak_at"]),
            heap_peak_at=_at_from_json(data["heap_peak_at"]),
            threads=_optional_int(data["threads"]),
            blocks=tuple(BlockPeak.from_dict(b) for b in data["blocks"]),
            extra={str(k): int(v) for k, v in data["extra"].items()},
        )

    def to_json(self) -> str:
        """The report as one line of JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MemoryReport:
        """Parse :meth:`to_json` output; raises ConfigError on malformed text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"memory report: not JSON ({err.msg}); write it with to_json()"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError("memory report: expected a JSON object; write it with to_json()")
        return cls.from_dict(data)
