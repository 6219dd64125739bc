"""Reading device profiles: ``devices/profiles/<name>.toml``, one kind of device each.

A profile gives total RAM, the share of it a training process may use and the runtime overhead
to subtract (in MiB); its training budget is :attr:`DeviceProfile.budget_bytes
<profl_core.devices.types.DeviceProfile.budget_bytes>`.
"""

from __future__ import annotations

from pathlib import Path

from profl_core.devices.types import MIB, PROFILE_KINDS, DeviceProfile
from profl_core.devices.validation import check_name, read_table, toml_files

_PROFILE_KEYS = (
    "name", "kind", "ram_mib", "usable_fraction", "runtime_overhead_mib", "shared_gpu_memory",
    "source",
)


def load_profile(path: Path) -> DeviceProfile:
    """Read and validate one profile file.

    Args:
        path: A ``devices/profiles/<name>.toml`` file.

    Returns:
        The profile; its budget is positive.

    Raises:
        ConfigError: On any missing, unknown or invalid field, or a budget that is not positive.
    """
    table = read_table(path)
    table.check_keys(_PROFILE_KEYS)
    name = check_name(table, path)
    kind = table.string("kind", 'add kind = "phone"', choices=PROFILE_KINDS)
    ram_mib = table.integer("ram_mib", "use a positive whole number of MiB", minimum=1)
    fraction = table.number("usable_fraction", "use a number in (0, 1], e.g. 0.4")
    if fraction > 1:
        table.fail("usable_fraction", "use a number in (0, 1], e.g. 0.4")
    overhead_mib = table.integer(
        "runtime_overhead_mib", "use a whole number of MiB >= 0", minimum=0
    )
    shared = table.boolean("shared_gpu_memory", "use true or false")
    source = table.string("source", 'add source = "<where the RAM figure comes from>"')
    if "\n" in source:
        table.fail("source", "keep the source on one line")
    profile = DeviceProfile(
        name=name,
        kind=kind,
        ram_bytes=ram_mib * MIB,
        usable_fraction=fraction,
        runtime_overhead_bytes=overhead_mib * MIB,
        shared_gpu_memory=shared,
        source=source,
    )
    if profile.budget_bytes <= 0:
        table.fail(
            "runtime_overhead_mib",
            f"the budget ram_mib * usable_fraction - runtime_overhead_mib is "
            f"{profile.budget_bytes / MIB:.1f} MiB; lower the overhead or raise usable_fraction",
        )
    return profile


def load_profiles(folder: Path) -> dict[str, DeviceProfile]:
    """Read every ``*.toml`` profile in ``folder``.

    Args:
        folder: The profiles folder, e.g. ``devices/profiles``.

    Returns:
        Profiles by name, in file-name order.

    Raises:
        ConfigError: If the folder does not exist or any file is invalid.
    """
    return {p.name: p for p in map(load_profile, toml_files(folder, "profile"))}
