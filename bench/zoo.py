"""The model-zoo table: per block parameters, activation elements and output shape."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from profl_core.models import build_model, check_model_name, native_spec
from profl_core.models.summary import summarize_blocks
from profl_core.results import atomic_write_text


def zoo_table(
    models: list[str], num_classes: int, overrides: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """One row per (model, block) on each model's native input (``overrides``: spec fields
    set for every model, e.g. ``blocks`` or ``input_size``)."""
    rows = []
    for name in models:
        check_model_name(name)
        spec = native_spec(name, **{"num_classes": num_classes, **(overrides or {})})
        input_shape = "x".join(map(str, spec.input_shape))
        for row in summarize_blocks(build_model(spec)):
            rows.append({
                "model": row.model,
                "input": input_shape,
                "block": row.block,
                "params": row.params,
                "act_elems_per_sample": row.activation_elements_per_sample,
                "output_shape": "x".join(map(str, row.output_shape)),
            })
    return pd.DataFrame(rows)


def render(table: pd.DataFrame) -> str:
    """The zoo table as GitHub markdown."""
    return tabulate(table, headers="keys", tablefmt="github", showindex=False, intfmt=",")


def write_zoo(table: pd.DataFrame, out: Path) -> list[Path]:
    """Write ``model_zoo.md`` and ``model_zoo.csv`` into ``out``; return their paths."""
    md, csv = out / "model_zoo.md", out / "model_zoo.csv"
    atomic_write_text(md, "# Model zoo\n\n" + render(table) + "\n")
    atomic_write_text(csv, table.to_csv(index=False))
    return [md, csv]
