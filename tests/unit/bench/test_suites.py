"""Suite TOML loading: every shipped suite loads; bad accuracy sections are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run_settings import TrainingConfig
from bench.suites import SUITES_DIR, load_suite, run_name, suite_names
from profl_core.errors import ConfigError
from profl_core.methods.registry import METHODS

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


def test_default_suite_runs_every_family_and_the_rivals_non_iid_with_three_seeds() -> None:
    """A method of every registered family and the three rivals, a non-IID partition, 3
    seeds, one budget, ProFL's calibrated EM rule."""
    section = load_suite("default").accuracy
    assert section is not None
    families = {info.family for info in METHODS.values()} - {"other"}
    assert {METHODS[m].family for m in section.methods} == families
    assert {"profl", "fedavg", "fedavg-fit", "slt", "fedepth", "neulite"} <= set(section.methods)
    assert section.partitions == ("dirichlet:0.5",)
    assert section.seeds == (0, 1, 2)
    assert section.config("profl", "dirichlet:0.5", 0).options == {}
    assert section.config("fedavg", "dirichlet:0.5", 0).options == {}
    assert {section.config(m, "dirichlet:0.5", 0).rounds for m in section.methods} == {150}
    assert len(section.runs()) == 24


def test_alternatives_suite_has_the_default_setting_and_both_new_methods() -> None:
    default, section = load_suite("default").accuracy, load_suite("alternatives").accuracy
    assert default is not None
    assert section is not None
    assert set(section.methods) == {"profl", "profl-accum", "fedavg-fit"}
    assert section.config("profl-accum", "dirichlet:0.5", 0).options == {}
    for field in ("dataset", "model", "width", "fleet", "clients", "per_round", "rounds",
                  "local_epochs", "batch_size", "lr", "samples_per_client", "test_samples"):
        assert getattr(section.config("fedavg-fit", "dirichlet:0.5", 0), field) == getattr(
            default.config("fedavg", "dirichlet:0.5", 0), field), field
    assert section.seeds == default.seeds
    assert section.workers == 2
    assert section.torch_threads == 1


def test_accuracy_section_values_and_run_names(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    section = load_suite(str(path)).accuracy
    assert section is not None
    assert section.base.clients == 8
    assert section.base.lr == 0.01
    assert section.runs() == [("profl", "iid", 0), ("fedavg", "iid", 0)]
    config = section.config("profl", "iid", 0)
    assert config.method == "profl"
    assert config.rounds == 2
    assert config.dataset == "synthetic"
    assert config.label == "profl"
    assert run_name("heterofl", "dirichlet:0.5", 3) == "heterofl-dirichlet0.5-s3"


def test_shared_values_are_training_config_fields_with_its_defaults(tmp_path: Path) -> None:
    """Every TrainingConfig field but the per-run ones is a shared value; unset ones keep
    TrainingConfig's defaults (one source of truth)."""
    path = tmp_path / "mine.toml"
    path.write_text(GOOD + "frozen_bn = \"train\"\nfeature_cache = false\n")
    section = load_suite(str(path)).accuracy
    assert section is not None
    assert section.base.frozen_bn == "train"
    assert section.base.feature_cache is False
    default = TrainingConfig()
    assert section.base.local_epochs == default.local_epochs
    assert section.base.checkpoint_every == default.checkpoint_every


def test_variants_and_seeds_expand_into_runs(tmp_path: Path) -> None:
    """methods lists registry names and variant labels; each runs on every partition and
    seed, with the variant's method, options and field overrides."""
    path = tmp_path / "ablation.toml"
    path.write_text(GOOD.replace('methods = ["profl", "fedavg"]',
                                 'methods = ["profl", "profl-noshrink", "fedavg"]')
                    .replace('partitions = ["iid"]', 'partitions = ["iid", "shards:2"]')
                    + "seeds = [0, 1]\n"
                    + "[accuracy.variants.profl]\nschedule = \"fixed\"\n"
                    + "[accuracy.variants.profl-noshrink]\nmethod = \"profl\"\n"
                    + "shrink = false\nschedule = \"fixed\"\nlr = 0.05\n")
    section = load_suite(str(path)).accuracy
    assert section is not None
    runs = section.runs()
    assert len(runs) == 3 * 2 * 2
    assert runs[:3] == [("profl", "iid", 0), ("profl-noshrink", "iid", 0), ("fedavg", "iid", 0)]
    assert {s for _, _, s in runs} == {0, 1}
    names = {run_name(*run) for run in runs}
    assert len(names) == len(runs)
    assert "profl-noshrink-shards2-s1" in names
    plain = section.config("profl", "iid", 1)
    ablation = section.config("profl-noshrink", "shards:2", 1)
    assert plain.method == "profl"
    assert plain.label == "profl"
    assert plain.options == {"schedule": "fixed"}
    assert ablation.method == "profl"
    assert ablation.label == "profl-noshrink"
    assert ablation.seed == 1
    assert ablation.options == {"shrink": False, "schedule": "fixed"}
    assert ablation.lr == 0.05
    assert plain.lr == 0.01
    assert ablation.partition == "shards:2"
    assert ablation.to_json()["label"] == "profl-noshrink"
    assert section.config("fedavg", "iid", 0).options == {}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("bogus = 1", "unknown key 'bogus'"),
        ('rounds = "ten"', "rounds = 'ten'; use an integer"),
        ("rounds = true", "rounds = True; use an integer"),
        ("width = true", "width = True"),
        ("feature_cache = 1", "feature_cache = 1; use bool"),
        ('methods = ["profl", "nope"]', "'nope' is neither a method"),
        ("methods = [1]", "methods = \\[1\\]"),
        ("seeds = [0, true]", "seeds = \\[0, True\\]"),
        ("seeds = [1, 1]", "duplicates"),
        ("seeds = 1", "seeds = 1; use a non-empty list"),
        ("seed = 1\nseeds = [0, 1]", "seed or seeds, not both"),
        ("schedule = \"fixed\"", "schedule: a method option \\(profl, profl-accum\\); set it in "
                                 "\\[accuracy.variants.profl\\]"),
        ('method = "profl"', "method: not a shared setting; list methods"),
        ('frozen_bn = "off"', "frozen_bn = 'off'; use one of 'eval', 'train'"),
        ("workers = 0", "workers = 0"),
        ("threads = -1", "threads = -1"),
        ("[accuracy.variants.profl]\nschedule = \"weekly\"", "schedule = 'weekly'"),
        ("[accuracy.variants.profl]\nem_window = true", "em_window = True; use an integer"),
        ("[accuracy.variants.fedavg]\nem_window = 5", "unknown key 'em_window'.*fedavg's"),
        ("[accuracy.variants.x]\nshrink = false", "method = 'x'; use one of"),
        ("[accuracy.variants.heterofl]\nscaler = false", "heterofl\\] not listed in methods"),
        ("[accuracy.variants.profl]\nseed = 3", "unknown key 'seed'"),
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
    assert "[accuracy" in message
    assert "\n" not in message
