"""The effective-movement figure of a ProFL run: its panels built from hand-made
``rounds.jsonl`` records, and the PNG it writes."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.plots import EmPanel, em_figure, em_panels, has_em

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _round(number: int, stage: str, step: int, submodel: str, em: float | None,
           end: str | None = None) -> dict[str, Any]:
    """The fields of a ``rounds.jsonl`` record that the panels read."""
    return {"round": number, "stage": stage, "step": step, "submodel": submodel,
            "accuracy": None, "metrics": {"em": em}, "step_end": end}


#: Three steps: train B2 (3 rounds, EM from its 2nd, ended by EM), fit basic2 (2 rounds, no EM
#: yet, ended at its cap) and grow B1 (2 rounds, cut by the run's end).
ROUNDS = [
    _round(1, "shrink", 2, "grow:2", None),
    _round(2, "shrink", 2, "grow:2", 0.8),
    _round(3, "shrink", 2, "grow:2", 0.4, "em"),
    _round(4, "shrink", 2, "shrink:2", None),
    _round(5, "shrink", 2, "shrink:2", None, "cap"),
    _round(6, "grow", 1, "grow:1", None),
    _round(7, "grow", 1, "grow:1", 0.9),
]


@pytest.fixture(scope="module")
def panels() -> list[EmPanel]:
    return em_panels(ROUNDS, 0.6)


def test_one_panel_per_step_with_its_label(panels: list[EmPanel]) -> None:
    assert [p.label for p in panels] == ["train B2", "fit basic2", "grow B1"]


def test_rounds_are_numbered_within_each_step(panels: list[EmPanel]) -> None:
    assert panels[0].rounds.tolist() == [1, 2, 3]
    assert panels[1].rounds.tolist() == [1, 2]
    assert panels[2].rounds.tolist() == [1, 2]


def test_em_is_nan_where_the_record_has_none(panels: list[EmPanel]) -> None:
    assert math.isnan(panels[0].em[0])
    assert panels[0].em[1:].tolist() == [0.8, 0.4]
    assert np.isnan(panels[1].em).all()


def test_a_step_ends_at_its_last_round(panels: list[EmPanel]) -> None:
    assert [p.end_round for p in panels] == [3, 2, 2]


def test_end_reasons_come_from_step_end(panels: list[EmPanel]) -> None:
    assert panels[0].end_reason == "em"
    assert panels[1].end_reason == "cap"


def test_a_step_cut_by_the_run_ends_with_run_end(panels: list[EmPanel]) -> None:
    assert panels[2].end_reason == "run end"


def test_every_panel_gets_the_level_and_no_oracle(panels: list[EmPanel]) -> None:
    assert [p.level for p in panels] == [0.6, 0.6, 0.6]
    assert [p.oracle_round for p in panels] == [None, None, None]


def test_only_rounds_with_the_em_metric_have_em() -> None:
    plain = {**ROUNDS[0], "metrics": {}}
    assert has_em(ROUNDS)
    assert not has_em([plain])


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (bytes 16-24, big-endian)."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


@pytest.fixture(scope="module")
def figure(panels: list[EmPanel], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three panels, the first with an oracle round, drawn into a PNG."""
    shown = [EmPanel(label=p.label, rounds=p.rounds, em=p.em, level=p.level,
                     end_round=p.end_round, end_reason=p.end_reason,
                     oracle_round=2 if i == 0 else None) for i, p in enumerate(panels)]
    return em_figure(shown, tmp_path_factory.mktemp("em") / "sub" / "em.png", "a run")


def test_the_figure_is_a_png(figure: Path) -> None:
    assert figure.read_bytes()[:8] == PNG_MAGIC


def test_three_panels_lie_in_one_row(figure: Path) -> None:
    """Three panels of ~2.7 x 2.3 inches side by side at 110 dpi: wider than high."""
    width, height = _png_size(figure)
    assert 600 < width < 1200
    assert 200 < height < 500
    assert width > 2 * height


def test_ten_panels_lie_in_two_rows(panels: list[EmPanel], tmp_path: Path) -> None:
    """Ten steps (ProFL at T = 4): two rows of five, about twice the height of one row."""
    path = em_figure([panels[0]] * 10, tmp_path / "ten.png", "ten steps")
    width, height = _png_size(path)
    assert 1200 < width < 2000
    assert 450 < height < 900
