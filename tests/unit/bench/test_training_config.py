"""TrainingConfig is the one list of run settings: ``profl train`` flags come from its fields,
method-specific settings go through ``options`` and are checked against the method's config."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from bench.cli import build_parser
from bench.commands.train import config_from_args
from bench.config_fields import add_flag, check_value, field_specs
from bench.run_settings import (
    TRAINING_FIELDS,
    TrainingConfig,
    all_option_specs,
    method_config,
    option_specs,
)
from profl_core.errors import ConfigError
from profl_core.methods.depthfl import DepthFLConfig
from profl_core.methods.profl import ProFLConfig
from profl_core.methods.registry import METHODS


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in _train_parser()._actions}


def _config(*argv: str) -> TrainingConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_every_training_config_field_is_a_flag_with_its_docstring_help() -> None:
    actions = _actions()
    names = {f.name for f in fields(TrainingConfig)}
    assert names - {"options"} <= set(actions)
    for name in names - {"options", "backend"}:  # --backend comes from bench/backends.py
        action = actions[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert TRAINING_FIELDS[name].help, f"{name} has no line in TrainingConfig's docstring"
        assert action.help is not None
        assert action.help.startswith(TRAINING_FIELDS[name].help.replace("%", "%%"))
    assert isinstance(actions["feature_cache"], argparse.BooleanOptionalAction)
    assert actions["data_dir"].type is Path
    assert actions["per_round"].type is int
    assert actions["lr"].type is float
    assert actions["frozen_bn"].choices == ("eval", "train")


def test_a_new_field_becomes_a_flag_from_its_annotation_default_and_docstring() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Settings:
        """Some settings.

        Attributes:
            new_knob: How far to turn it, in
                whole turns.
            loud: Make noise.
            where: A folder.
        """

        new_knob: int = 3
        loud: bool = False
        where: Path | None = None

    parser = argparse.ArgumentParser()
    for spec in field_specs(Settings).values():
        add_flag(parser, spec)
    assert vars(parser.parse_args([])) == {"new_knob": 3, "loud": False, "where": None}
    args = parser.parse_args(["--new-knob", "5", "--loud", "--where", "x"])
    assert args.new_knob == 5
    assert args.loud is True
    assert args.where == Path("x")
    assert parser.parse_args(["--no-loud"]).loud is False
    knob = next(a for a in parser._actions if a.dest == "new_knob")
    assert knob.help == "How far to turn it, in whole turns. (default: 3)"


def test_flag_defaults_are_the_field_defaults() -> None:
    assert _config() == TrainingConfig()
    assert _config().options == {}


def test_method_options_come_from_the_method_configs_not_training_config() -> None:
    training = {f.name for f in fields(TrainingConfig)}
    assert not {"distill_lr", "schedule", "shrink"} & training
    profl = set(option_specs("profl"))
    assert {"distill_lr", "schedule", "shrink", "em_window", "em_evaluation_number",
            "em_slope_threshold", "em_level", "em_samples", "min_rounds", "max_rounds",
            "weighting"} <= profl
    assert profl == {f.name for f in fields(ProFLConfig)} - training
    assert "metrics_every" in option_specs("depthfl")
    assert "accumulate" not in option_specs("profl-accum")  # fixed by the name
    assert {"scaler", "kd", "em_window"} <= set(all_option_specs())
    actions = _actions()
    for name in all_option_specs():
        assert actions[name].default is argparse.SUPPRESS


def test_only_given_option_flags_go_into_options() -> None:
    config = _config("--em-window", "10", "--distill-lr", "0.005", "--no-shrink",
                     "--schedule", "fixed")
    assert config.options == {"em_window": 10, "distill_lr": 0.005, "shrink": False,
                              "schedule": "fixed"}
    built = method_config(config)
    assert built.em_window == 10
    assert built.distill_lr == 0.005
    assert built.shrink is False
    assert built.schedule == "fixed"
    assert built.em_level == ProFLConfig(rounds=1).em_level
    heterofl = _config("--method", "heterofl", "--no-scaler", "--levels", "1", "0.5")
    assert heterofl.options == {"scaler": False, "levels": (1.0, 0.5)}
    assert method_config(heterofl).levels == (1.0, 0.5)


def test_an_option_flag_of_another_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError,
                       match="--em-window is a profl/profl-accum option, not fedavg's"):
        _config("--method", "fedavg", "--em-window", "10")


def test_unknown_option_is_one_config_error_naming_the_method_and_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        TrainingConfig(method="fedavg", options={"schedule": "fixed"})
    message = str(err.value)
    assert message.startswith("fedavg options: unknown key 'schedule'")
    for key in option_specs("fedavg"):
        assert key in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="profl options: unknown key 'em_windw'"):
        TrainingConfig(options={"em_windw": 3})


def test_option_values_are_type_checked() -> None:
    with pytest.raises(ConfigError, match="em_window = True; use an integer"):
        TrainingConfig(options={"em_window": True})
    with pytest.raises(ConfigError, match="schedule = 'weekly'"):
        TrainingConfig(options={"schedule": "weekly"})
    with pytest.raises(ConfigError, match="weighting = 'uniform'"):
        TrainingConfig(method="heterofl", options={"weighting": "uniform"})
    assert TrainingConfig(options={"max_rounds": None}).options == {"max_rounds": None}


def test_shared_values_reach_the_method_config() -> None:
    config = TrainingConfig(method="depthfl", rounds=7, per_round=3, lr=0.2, eval_every=4)
    built = method_config(config)
    assert isinstance(built, DepthFLConfig)
    assert built.rounds == 7
    assert built.per_round == 3
    assert built.lr == 0.2
    assert built.metrics_every == 4
    assert method_config(TrainingConfig(method="depthfl", eval_every=4,
                                        options={"metrics_every": 2})).metrics_every == 2
    assert method_config(TrainingConfig(method="profl-accum")).accumulate is True
    for name in METHODS:
        method_config(TrainingConfig(method=name))


def test_label_defaults_to_the_method_and_is_recorded_with_the_options() -> None:
    assert TrainingConfig(method="heterofl").label == "heterofl"
    config = TrainingConfig(label="profl-noshrink", options={"shrink": False})
    data = config.to_json()
    assert data["method"] == "profl"
    assert data["label"] == "profl-noshrink"
    assert data["options"] == {"shrink": False}
    assert TrainingConfig(data_dir=Path("d")).to_json()["data_dir"] == "d"


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [("clients", True, "use an integer"), ("lr", False, "use a number"),
     ("feature_cache", 0, "use bool"), ("model", 3, "use a string")],
)
def test_check_value_rejects_bool_for_numbers_and_numbers_for_bool(
    name: str, value: object, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        check_value(TRAINING_FIELDS[name], value, "here")
    assert check_value(TRAINING_FIELDS["lr"], 1, "here") == 1.0
    assert isinstance(check_value(TRAINING_FIELDS["lr"], 1, "here"), float)
