"""Identity stand-ins (``ModelSpec.identity_standins``, ``--identity-standins``): a block that
keeps its input's shape is stood in for by the identity, and ProFL fits nothing for it."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.cli import main
from bench.planning import read_plan
from profl_core.errors import ConfigError
from profl_core.memory import measure
from profl_core.memory.case import TrainingCase, all_cases, fitted_steps
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec
from profl_core.models.wrapper import stand_in

HERE = Path(__file__).resolve().parents[1] / "memory"
TOY = "plan_toy_model:build"
#: Every layer unit of the toy model its own block: 16x16 3->16, 16->16, stride-2 16->24, 24->24.
UNITS = ("0.0-2", "0.3-5", "1.0-2", "1.3-5", "2")
BATCH = 8


@pytest.fixture(autouse=True)
def _toy_importable():
    sys.path.insert(0, str(HERE))
    yield
    sys.path.remove(str(HERE))


def toy(identity: bool = True):
    return native_spec(TOY, input_size=16, blocks=UNITS, identity_standins=identity)


def _keeps_shape(spec) -> list[bool]:
    """The oracle: which blocks map a real tensor to one of the same shape."""
    model = build_model(spec).eval()
    x = torch.zeros(1, 3, 16, 16)
    keeps = []
    with torch.no_grad():
        for i in range(model.num_blocks):
            y = model.block(i)(x)
            keeps.append(y.shape == x.shape)
            x = y
    return keeps


def test_a_shape_keeping_block_gets_the_identity() -> None:
    assert isinstance(stand_in((16, 8, 8), (16, 8, 8), model="m", block=2, identity=True),
                      nn.Identity)


def test_a_shape_changing_block_keeps_its_convolution() -> None:
    module = stand_in((16, 8, 8), (24, 4, 4), model="m", block=2, identity=True)
    assert isinstance(module[0], nn.Conv2d)


def test_without_the_flag_every_block_gets_a_convolution() -> None:
    module = stand_in((16, 8, 8), (16, 8, 8), model="m", block=2)
    assert isinstance(module[0], nn.Conv2d)


def test_fitted_steps_are_the_shape_changing_blocks() -> None:
    keeps = _keeps_shape(toy())
    expected = tuple(t for t in range(2, len(keeps) + 1) if not keeps[t - 1])
    assert keeps == [False, True, False, True]
    assert fitted_steps(toy()) == expected


def test_without_the_flag_every_step_is_fitted() -> None:
    assert fitted_steps(toy(identity=False)) == (2, 3, 4)


def test_profl_plans_no_fit_for_an_identity_stand_in() -> None:
    method = ProFL(ProFLConfig(rounds=8, batch_size=BATCH))
    state = method.init_state(build_model(toy()), np.random.default_rng(0))
    assert list(method.memory_plan(state)) == ["grow:4", "grow:3", "shrink:3", "grow:2",
                                               "grow:1"]


def test_the_cases_leave_out_the_fits_that_do_not_exist() -> None:
    labels = [c.label for c in all_cases(toy(), batch_size=BATCH)]
    assert labels == ["full", "shrink:3", "grow:1", "grow:2", "grow:3", "grow:4"]


def test_a_case_fitting_an_identity_is_one_line_refused() -> None:
    with pytest.raises(ConfigError, match=r"case shrink:2: block 2's stand-in is the identity"):
        TrainingCase(model=toy(), kind="shrink", step=2, batch_size=BATCH)


def test_the_case_key_says_identity() -> None:
    key = TrainingCase(model=toy(), kind="grow", step=1, batch_size=BATCH).key
    other = TrainingCase(model=toy(identity=False), kind="grow", step=1, batch_size=BATCH).key
    assert "@id/" in key
    assert key != other


def test_the_first_step_holds_less_with_identity_stand_ins() -> None:
    with_id = measure(TrainingCase(model=toy(), kind="grow", step=1, batch_size=BATCH),
                      probe="dispatch")
    without = measure(TrainingCase(model=toy(identity=False), kind="grow", step=1,
                                   batch_size=BATCH), probe="dispatch")
    assert with_id.tensor_peak_bytes < without.tensor_peak_bytes


def test_predict_equals_dispatch_on_an_identity_output_module() -> None:
    case = TrainingCase(model=toy(), kind="grow", step=1, batch_size=BATCH)
    predicted = measure(case, probe="predict", threads=1)
    assert predicted.tensor_peak_bytes == measure(case, probe="dispatch").tensor_peak_bytes


def test_a_zoo_model_takes_identity_stand_ins_on_its_own_stages() -> None:
    spec = native_spec("cnn", width=0.25, identity_standins=True)
    model = build_model(spec, generator=torch.Generator().manual_seed(0))
    zoo = build_model(replace(spec, identity_standins=False),
                      generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    zoo.eval()
    with torch.no_grad():
        assert torch.equal(model(x), zoo(x))
    assert fitted_steps(spec) == (2, 3, 4)  # every cnn stage changes the shape


def test_read_plan_returns_the_plans_identity_flag(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"schema": "profl-partition-plan/1",
                                "model": {"name": "cnn", "identity_standins": True},
                                "blocks": ["block1", "block2", "head"]}))
    assert read_plan(path, "cnn") == (("block1", "block2", "head"), True)


def test_read_plan_refuses_a_flag_that_is_no_boolean(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"schema": "profl-partition-plan/1",
                                "model": {"name": "cnn", "identity_standins": "yes"},
                                "blocks": ["block1", "block2", "head"]}))
    with pytest.raises(ConfigError, match=r"model.identity_standins = 'yes'"):
        read_plan(path, "cnn")


@pytest.mark.integration
def test_profl_trains_with_identity_stand_ins_and_skips_their_fits(tmp_path: Path) -> None:
    blocks = "block1.0-2,block1.3-5,block2,block3,block4,head"  # block1.3-5 keeps 8x28x28
    code = main(["train", "--method", "profl", "--dataset", "synthetic", "--model", "cnn",
                 "--width", "0.25", "--blocks", blocks, "--identity-standins",
                 "--clients", "4", "--per-round", "2", "--rounds", "9", "--local-epochs", "1",
                 "--schedule", "fixed", "--partition", "iid", "--out", str(tmp_path)])
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert code == 0
    assert [r["submodel"] for r in rounds] == ["grow:5", "shrink:5", "grow:4", "shrink:4",
                                               "grow:3", "shrink:3", "grow:2", "grow:1",
                                               "grow:2"]
