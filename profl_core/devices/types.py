"""Devices, profiles and fleets as data: the budget rule, eligibility and spreading a fleet.

Reading them from ``devices/`` files is :mod:`profl_core.devices.profiles` and
:mod:`profl_core.devices.fleets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from profl_core.errors import ConfigError

MIB = 2**20
"""Bytes in one MiB."""
MB = 10**6
"""Bytes in one MB (SI)."""
PROFILE_KINDS = ("phone", "board", "jetson")
"""Allowed values of a profile's ``kind``."""
FLEET_KINDS = ("uniform", "mix", "relative", "tiers", "explicit")
"""Allowed values of a fleet's ``kind``."""
RELATIVE_KINDS = ("relative", "tiers")
"""Fleet kinds whose budgets are fractions of the reference (full-model) peak."""


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    """One kind of device, as read from a profile file.

    Attributes:
        name: Profile name (equal to the file's stem), e.g. ``"phone-4gb"``.
        kind: ``"phone"``, ``"board"`` or ``"jetson"``.
        ram_bytes: Total RAM in bytes.
        usable_fraction: Share of RAM a training process may use, in (0, 1]. An assumption.
        runtime_overhead_bytes: Runtime/framework overhead subtracted from the usable RAM.
        shared_gpu_memory: True when the GPU uses the same DRAM as the CPU (Jetson).
        source: One line saying where the RAM figure comes from.
    """

    name: str
    kind: str
    ram_bytes: int
    usable_fraction: float
    runtime_overhead_bytes: int
    shared_gpu_memory: bool
    source: str

    @property
    def budget_bytes(self) -> int:
        """Training budget: ``floor(ram_bytes * usable_fraction) - runtime_overhead_bytes``.

        The fraction is taken as the decimal number written in the file, so the result matches a
        hand computation exactly.
        """
        usable = math.floor(Fraction(repr(self.usable_fraction)) * self.ram_bytes)
        return usable - self.runtime_overhead_bytes


@dataclass(frozen=True, kw_only=True)
class Device:
    """One client device of a fleet.

    Attributes:
        device_id: Index of the device in its fleet, 0-based.
        budget_bytes: Memory the device can give to one training step, in bytes.
        profile: Name of the profile the device was built from, if any.
        tier: Name of the device's tier (``tiers`` fleets), if any.
    """

    device_id: int
    budget_bytes: int
    profile: str | None = None
    tier: str | None = None


@dataclass(frozen=True)
class Fleet:
    """A named, ordered list of devices.

    Attributes:
        name: Fleet name (the file's stem).
        devices: The devices, ``devices[i].device_id == i``.
        kind: How the fleet was built (one of :data:`FLEET_KINDS`).
    """

    name: str
    devices: tuple[Device, ...]
    kind: str = "explicit"

    def eligible(self, required_bytes: int) -> tuple[Device, ...]:
        """Devices whose budget covers ``required_bytes`` (``budget_bytes >= required_bytes``).

        Args:
            required_bytes: Peak memory of the training case, in bytes.

        Returns:
            The eligible devices, in fleet order.
        """
        return tuple(d for d in self.devices if d.budget_bytes >= required_bytes)

    def participation(self, required_bytes: int) -> float:
        """Share of the fleet that is eligible for ``required_bytes`` (0.0 for an empty fleet)."""
        if not self.devices:
            return 0.0
        return len(self.eligible(required_bytes)) / len(self.devices)

    def spread(self, count: int) -> Fleet:
        """``count`` devices at evenly spaced positions, renumbered ``0 .. count-1``.

        Position ``floor(i * len(devices) / count)`` for i = 0 .. count-1, so a fleet listed in
        groups (``tiers``, ``mix``) keeps its group shares and a random fleet stays random.

        Raises:
            ConfigError: ``count`` is not in ``1 .. len(devices)``.
        """
        total = len(self.devices)
        if not 1 <= count <= total:
            raise ConfigError(
                f"clients={count}: fleet {self.name!r} has {total} devices; use 1 to {total}"
            )
        picked = [self.devices[i * total // count] for i in range(count)]
        devices = tuple(replace(d, device_id=i) for i, d in enumerate(picked))
        return Fleet(self.name, devices, self.kind)

    def budgets_bytes(self) -> np.ndarray:
        """The devices' budgets in bytes, as an ``int64`` array in fleet order."""
        return np.array([d.budget_bytes for d in self.devices], dtype=np.int64)
