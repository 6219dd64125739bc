"""Device profiles and fleets: loading, budgets, eligibility, errors and ``profl devices``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.paths import DEVICES_DIR
from profl_core.devices import (
    MIB,
    Device,
    DeviceProfile,
    Fleet,
    fleet_needs_reference,
    load_fleet,
    load_profile,
    load_profiles,
)
from profl_core.errors import ConfigError

PROFILES = DEVICES_DIR / "profiles"
FLEETS = DEVICES_DIR / "fleets"

# profl-paper.md §4.2: the authors' seed-42 list (first 10) and pool sizes, in their "MB" (= MiB).
PAPER_FIRST_10 = [754, 214, 125, 859, 381, 350, 328, 242, 854, 204]
PAPER_POOLS = {840: 8, 506: 43, 220: 81, 112: 99, 100: 100}

GOOD_PROFILE = """\
name = "{name}"
kind = "phone"
ram_mib = 3000
usable_fraction = 0.3
runtime_overhead_mib = 100
shared_gpu_memory = false
source = "hand-made test profile"
"""


@pytest.fixture(scope="module")
def profiles() -> dict[str, DeviceProfile]:
    return load_profiles(PROFILES)


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_paper_uniform_reproduces_authors_seed_42_list(profiles):
    fleet = load_fleet(FLEETS / "paper-uniform.toml", profiles)
    budgets_mib = fleet.budgets_bytes() // MIB
    assert budgets_mib[:10].tolist() == PAPER_FIRST_10
    assert len(fleet.devices) == 100
    for required_mib, expected in PAPER_POOLS.items():
        assert len(fleet.eligible(required_mib * MIB)) == expected


def test_every_shipped_profile_loads():
    expected = {
        "phone-2gb", "phone-3gb", "phone-4gb", "phone-6gb", "phone-8gb",
        "rpi4-2gb", "rpi4-4gb", "rpi4-8gb",
        "jetson-nano-4gb", "jetson-tx2-8gb", "jetson-orin-nano-8gb",
    }
    loaded = load_profiles(PROFILES)
    assert len(list(PROFILES.glob("*.toml"))) == len(expected)
    assert set(loaded) == expected
    assert all(p.budget_bytes > 0 for p in loaded.values())
    assert all(p.shared_gpu_memory == (p.kind == "jetson") for p in loaded.values())


def test_every_shipped_fleet_loads(profiles):
    expected = {
        "paper-uniform": 100, "edge-mix": 100, "relative-uniform": 100, "four-tiers": 100,
        "lab-testbed": 8,
    }
    files = sorted(FLEETS.glob("*.toml"))
    assert len(files) == len(expected)
    for path in files:
        fleet = load_fleet(path, profiles, reference_peak_bytes=840 * MIB)
        assert len(fleet.devices) == expected[fleet.name]
        assert [d.device_id for d in fleet.devices] == list(range(expected[fleet.name]))
        assert fleet.budgets_bytes().min() > 0


def test_budget_rule_matches_hand_computation(tmp_path):
    profile = load_profile(_write(tmp_path, "hand", GOOD_PROFILE.format(name="hand")))
    # 3000 MiB * 0.3 = 900 MiB = 943718400 bytes; minus 100 MiB = 104857600 bytes.
    assert profile.ram_bytes == 3_145_728_000
    assert profile.budget_bytes == 943_718_400 - 104_857_600


def test_shipped_phone_4gb_budget_hand_computed(profiles):
    # 4096 MiB * 0.35 = 1503238553.6 bytes -> floor 1503238553; minus 200 MiB = 209715200.
    assert profiles["phone-4gb"].budget_bytes == 1_503_238_553 - 209_715_200


def test_eligibility_matches_numpy_count():
    rng = np.random.default_rng(7)
    budgets = rng.integers(1, 1000, size=57)
    fleet = Fleet("t", tuple(_device(i, int(b)) for i, b in enumerate(budgets)))
    for required in (1, 250, 500, 999, 1000):
        assert len(fleet.eligible(required)) == int(np.count_nonzero(budgets >= required))
        assert fleet.participation(required) == pytest.approx(np.mean(budgets >= required))


def _device(i: int, budget: int) -> Device:
    return Device(device_id=i, budget_bytes=budget, profile=None, tier=None)


@pytest.mark.parametrize("name", ["relative-uniform", "four-tiers"])
def test_relative_budgets_scale_exactly_with_reference_peak(profiles, name):
    path = FLEETS / f"{name}.toml"
    base = load_fleet(path, profiles, reference_peak_bytes=10**9).budgets_bytes()
    triple = load_fleet(path, profiles, reference_peak_bytes=3 * 10**9).budgets_bytes()
    np.testing.assert_array_equal(triple, 3 * base)


def test_relative_uniform_stays_in_its_fraction_range(profiles):
    peak = 10**9
    budgets = load_fleet(
        FLEETS / "relative-uniform.toml", profiles, reference_peak_bytes=peak
    ).budgets_bytes()
    assert budgets.min() >= 0.12 * peak
    assert budgets.max() <= 1.07 * peak


def test_four_tiers_are_equal_groups(profiles):
    fleet = load_fleet(FLEETS / "four-tiers.toml", profiles, reference_peak_bytes=4 * 10**6)
    budgets, counts = np.unique(fleet.budgets_bytes(), return_counts=True)
    assert budgets.tolist() == [10**6, 2 * 10**6, 3 * 10**6, 4 * 10**6]
    assert counts.tolist() == [25, 25, 25, 25]


def test_relative_fleet_without_reference_peak_is_an_error(profiles):
    path = FLEETS / "relative-uniform.toml"
    assert fleet_needs_reference(path)
    assert not fleet_needs_reference(FLEETS / "paper-uniform.toml")
    with pytest.raises(ConfigError, match="full-model peak"):
        load_fleet(path, profiles)


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path, field: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert field in message


@pytest.mark.parametrize(
    ("replace", "by", "field"),
    [
        ('source = "hand-made test profile"', 'source = "x"\ncolour = "red"', "colour"),
        ("ram_mib = 3000", "ram_mib = -2", "ram_mib"),
        ("usable_fraction = 0.3", "usable_fraction = 1.5", "usable_fraction"),
        ("usable_fraction = 0.3", "usable_fraction = 0", "usable_fraction"),
        ("ram_mib = 3000", 'ram_mib = "3000"', "ram_mib"),
        ("runtime_overhead_mib = 100", "runtime_overhead_mib = 5000", "runtime_overhead_mib"),
    ],
)
def test_bad_profile_gives_one_line_error(tmp_path, replace, by, field):
    path = _write(tmp_path, "bad", GOOD_PROFILE.format(name="bad").replace(replace, by))
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    _assert_one_line_naming(err, path, field)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('name = "bad"\nkind = "mix"\n[[groups]]\nprofile = "phone-9gb"\ncount = 3\n',
         "groups[0].profile"),
        ('name = "bad"\nkind = "uniform"\ncount = 0\nbudget_unit = "MiB"\nlow = 1\nhigh = 2\n'
         "seed = 1\n", "count"),
        ('name = "bad"\nkind = "uniform"\ncount = 5\nbudget_unit = "GB"\nlow = 1\nhigh = 2\n'
         "seed = 1\n", "budget_unit"),
        ('name = "bad"\nkind = "relative"\ncount = 5\nlow_fraction = 0.1\nhigh_fraction = 1.0\n'
         "seed = 1\nsed = 2\n", "sed"),
        ('name = "bad"\nkind = "explicit"\nbudget_unit = "MiB"\n[[devices]]\nbudget = -5\n',
         "devices[0].budget"),
        ('name = "bad"\nkind = "swarm"\n', "kind"),
    ],
)
def test_bad_fleet_gives_one_line_error(tmp_path, profiles, text, field):
    path = _write(tmp_path, "bad", text)
    with pytest.raises(ConfigError) as err:
        load_fleet(path, profiles, reference_peak_bytes=MIB)
    _assert_one_line_naming(err, path, field)


def test_cli_devices_lists_tables(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "phone-2gb" in out
    assert "paper-uniform" in out
    assert "x peak" in out


def test_cli_devices_bad_fleet_dir_is_exit_2(tmp_path, capsys):
    _write(tmp_path, "bad", 'name = "bad"\nkind = "mix"\n[[groups]]\nprofile = "nope"\ncount = 1\n')
    assert main(["devices", "--fleets", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("profl: error: ")


def test_spread_keeps_tier_shares_and_renumbers(profiles):
    fleet = load_fleet(FLEETS / "four-tiers.toml", profiles, reference_peak_bytes=4 * 10**6)
    picked = fleet.spread(20)
    assert [d.device_id for d in picked.devices] == list(range(20))
    assert Counter(d.tier for d in picked.devices) == {t: 5 for t in Counter(
        d.tier for d in fleet.devices)}
    assert [d.budget_bytes for d in picked.devices] == [
        fleet.devices[i * 5].budget_bytes for i in range(20)]


def test_spread_rejects_more_clients_than_devices(profiles):
    fleet = load_fleet(FLEETS / "paper-uniform.toml", profiles)
    with pytest.raises(ConfigError, match="has 100 devices"):
        fleet.spread(101)
