"""Device profiles and fleets: who can train what.

A *profile* (``devices/profiles/<name>.toml``) describes one kind of device: total RAM, the share
of it a training process may use, and the runtime overhead to subtract. Its training budget is::

    budget_bytes = floor(ram_bytes * usable_fraction) - runtime_overhead_bytes

A *fleet* (``devices/fleets/<name>.toml``) is a list of devices, each with a ``budget_bytes``. Its
``kind`` says how the list is built:

* ``uniform``: integer budgets drawn uniformly from ``[low, high]`` (in ``budget_unit``) with
  ``random.Random(seed).randint``, exactly as the ProFL authors' ``distri_device()`` did.
* ``mix``: counts of named profiles.
* ``relative``: budgets uniform in ``[low_fraction, high_fraction]`` times the run's full-model
  peak (the *reference peak*, given at load time). Fractions are drawn in parts per million with
  ``np.random.default_rng(seed)``, so budgets scale exactly with the peak.
* ``tiers``: equal groups, each with a budget that is a fraction of the reference peak.
* ``explicit``: a list of devices, each by profile name or by budget.

Files say their unit (``ram_mib``, ``budget_unit = "MiB"``); the loader converts to integer bytes
once. Every bad field raises :class:`~profl_core.errors.ConfigError` with one line naming the file,
the field and the fix.

The modules:

* :mod:`~profl_core.devices.types` - :class:`DeviceProfile` (the budget rule), :class:`Device`
  and :class:`Fleet` (eligibility, spreading a fleet over fewer clients).
* :mod:`~profl_core.devices.profiles` - reading profile files.
* :mod:`~profl_core.devices.fleets` - reading fleet files; :mod:`~profl_core.devices.fleet_kinds`
  builds the budget list of each ``kind``.
* :mod:`~profl_core.devices.validation` - the typed fields of a device file's TOML tables.
"""

from profl_core.devices.fleet_kinds import BUDGET_UNITS, MAX_FRACTION, PPM
from profl_core.devices.fleets import fleet_needs_reference, load_fleet, load_fleets, load_fractions
from profl_core.devices.profiles import load_profile, load_profiles
from profl_core.devices.types import (
    FLEET_KINDS,
    MB,
    MIB,
    PROFILE_KINDS,
    RELATIVE_KINDS,
    Device,
    DeviceProfile,
    Fleet,
)
from profl_core.devices.validation import MAX_DEVICES, MAX_MIB

__all__ = [
    "BUDGET_UNITS",
    "FLEET_KINDS",
    "MAX_DEVICES",
    "MAX_FRACTION",
    "MAX_MIB",
    "MB",
    "MIB",
    "PPM",
    "PROFILE_KINDS",
    "RELATIVE_KINDS",
    "Device",
    "DeviceProfile",
    "Fleet",
    "fleet_needs_reference",
    "load_fleet",
    "load_fleets",
    "load_fractions",
    "load_profile",
    "load_profiles",
]
