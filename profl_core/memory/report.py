"""What a memory probe returns: :class:`MemoryReport` and its per-block :class:`BlockPeak`.

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


@dataclass(frozen=True)
class BlockPeak:
    """The highest live bytes while one block ran in one phase.

    Attributes:
        block: block name (``block1`` .. ``blockT``, ``output``, ``teacher_output``,
            ``basic<t>``) or a step segment (``loss``, ``optimizer``).
        phase: ``forward``, ``backward`` or ``optimizer``.
        peak_bytes: absolute live bytes at the segment's peak (baseline included).
        breakdown: bytes per category at that moment (empty for probes without categories).
    """

    block: str
    phase: Phase
    peak_bytes: int
    breakdown: Mapping[Category, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "block": self.block,
            "phase": self.phase,
            "peak_bytes": int(self.peak_bytes),
            "breakdown": _breakdown_to_json(self.breakdown),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockPeak:
        """Inverse of :meth:`to_dict`."""
        _check_keys(data, {"block", "phase", "peak_bytes", "breakdown"}, "block peak")
        if data["phase"] not in PHASES:
            raise ConfigError(f"block peak: phase={data['phase']!r}; use one of {PHASES}")
        return cls(
            block=str(data["block"]),
            phase=cast(Phase, data["phase"]),
            peak_bytes=int(data["peak_bytes"]),
            breakdown=_breakdown_from_json(data["breakdown"], "block peak breakdown"),
        )


@dataclass(frozen=True)
class MemoryReport:
    """The memory of one measured training step (the second one, after a warm-up step).

    Attributes:
        probe: the probe that measured it (``dispatch``, ``predict``, ``cuda``, ``rss``).
        device: the device the step ran on (``cpu``, ``cuda:0``).
        case_key: :attr:`profl_core.memory.case.TrainingCase.key` of the measured case.
        baseline_bytes: live bytes before the measured step: parameters, buffers, optimizer
            state and the input batch (0 for ``rss``, whose peak is already a delta).
        peak_bytes: the highest live bytes during the step, baseline included.
        peak_breakdown: bytes per category at the peak (empty for ``cuda`` and ``rss``).
        peak_at: ``(block, phase)`` where the peak happened; ``None`` when unknown (``rss``).
        blocks: one :class:`BlockPeak` per (block, phase) segment, in execution order.
        extra: probe-specific integers (reserved bytes, snapshots at phase ends, timings).
    """

    probe: str
    device: str
    case_key: str
    baseline_bytes: int
    peak_bytes: int
    peak_breakdown: Mapping[Category, int] = field(default_factory=dict)
    peak_at: tuple[str, str] | None = None
    blocks: tuple[BlockPeak, ...] = ()
    extra: Mapping[str, int] = field(default_factory=dict)

    @property
    def required_bytes(self) -> int:
        """The bytes a device needs to train this case: :attr:`peak_bytes`.

        For the tensor probes (``dispatch``, ``predict``) and ``cuda`` this is the absolute
        live peak including parameters, buffers, optimizer state and the input batch. For
        ``rss`` it is the process RSS delta over a process holding the built model (see
        :mod:`profl_core.memory.rss`), which is what an operating system would have to grant.
        """
        return self.peak_bytes

    @property
    def step_bytes(self) -> int:
        """Bytes the step adds on top of what was live before it."""
        return self.peak_bytes - self.baseline_bytes

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
            "baseline_bytes": int(self.baseline_bytes),
            "peak_bytes": int(self.peak_bytes),
            "peak_breakdown": _breakdown_to_json(self.peak_breakdown),
            "peak_at": list(self.peak_at) if self.peak_at is not None else None,
            "blocks": [b.to_dict() for b in self.blocks],
            "extra": {str(k): int(v) for k, v in self.extra.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryReport:
        """Inverse of :meth:`to_dict`; raises ConfigError on unknown or missing keys."""
        known = {
            "probe", "device", "case_key", "baseline_bytes", "peak_bytes", "peak_breakdown",
            "peak_at", "blocks", "extra",
        }
        _check_keys(data, known, "memory report")
        peak_at = data["peak_at"]
        return cls(
            probe=str(data["probe"]),
            device=str(data["device"]),
            case_key=str(data["case_key"]),
            baseline_bytes=int(data["baseline_bytes"]),
            peak_bytes=int(data["peak_bytes"]),
            peak_breakdown=_breakdown_from_json(data["peak_breakdown"], "memory report"),
            peak_at=(str(peak_at[0]), str(peak_at[1])) if peak_at is not None else None,
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
