"""Suite TOML loading: every shipped suite loads; bad accuracy sections are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.suites import SUITES_DIR, load_suite, run_name, suite_names
from profl_core.errors import ConfigError

GOOD = """
[accuracy]
dataset = "synthetic"
methods = ["profl", "fedavg"]
partitions = ["iid"]
clients = 8
per_round = 2
rounds = 2
"""


@pytest.mark.parametrize("name", suite_names())
def test_shipped_suites_load_and_start_with_their_command(name: str) -> None:
    first = (SUITES_DIR / f"{name}.toml").read_text().splitlines()[0]
    assert first.startswith("# ")
    assert ("profl " in first or "make bench" in first)
    suite = load_suite(name)
    assert suite.memory or suite.accuracy or suite.speed or suite.zoo_models


def test_default_suite_runs_every_method_on_two_partitions() -> None:
    section = load_suite("default").accuracy
    assert section is not None
    assert set(section.methods) == {"profl", "fedavg", "exclusivefl", "allsmall", "heterofl",
                                    "fedrolex", "depthfl", "inclusivefl"}
    assert section.partitions == ("iid", "dirichlet:0.5")
    assert section.schedule == "fixed"
    assert len(section.runs()) == 16


def test_accuracy_section_values_and_run_names(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    section = load_suite(str(path)).accuracy
    assert section is not None
    assert section.clients == 8
    assert section.lr == 0.01
    assert section.runs() == [("profl", "iid"), ("fedavg", "iid")]
    config = section.config("profl", "iid")
    assert (config.method, config.rounds, config.dataset) == ("profl", 2, "synthetic")
    assert run_name("heterofl", "dirichlet:0.5") == "heterofl-dirichlet0.5"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("bogus = 1", "unknown key 'bogus'"),
        ('rounds = "ten"', "rounds = 'ten'; use a int"),
        ("width = true", "width = True"),
        ('methods = ["profl", "nope"]', "method='nope'"),
        ('partitions = ["iid", "halves"]', "partition 'halves'"),
        ("clients = 0", "clients=0"),
        ('methods = ["profl", "profl"]', "duplicates"),
        ("target_accuracy = 2.0", "target_accuracy"),
    ],
)
def test_bad_accuracy_section_is_a_one_line_config_error(
    tmp_path: Path, extra: str, match: str
) -> None:
    path = tmp_path / "bad.toml"
    lines = [line for line in GOOD.splitlines() if not line.startswith(extra.split(" ")[0])]
    path.write_text("\n".join([*lines, extra]) + "\n")
    with pytest.raises(ConfigError, match=match) as err:
        load_suite(str(path))
    message = str(err.value)
    assert str(path) in message
    assert "[accuracy]" in message
    assert "\n" not in message
