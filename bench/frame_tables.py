"""A frame as a markdown table (NaN shown as ``-``) and as ``tables/<name>.md|csv`` files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tabulate import tabulate

from profl_core.results import atomic_write_text


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".1f") -> str:
    """``frame`` as a GitHub markdown table without its index; NaN renders as ``-``."""
    shown = frame.astype(object).where(frame.notna(), None)  # NaN renders as "-"
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False,
                    floatfmt=floatfmt, missingval="-")


def write_table(frame: pd.DataFrame, folder: Path, name: str,
                shown: pd.DataFrame | None = None) -> list[Path]:
    """``tables/<name>.csv`` from ``frame``, ``tables/<name>.md`` from ``shown`` (or it)."""
    md, csv = folder / "tables" / f"{name}.md", folder / "tables" / f"{name}.csv"
    atomic_write_text(md, markdown_table(frame if shown is None else shown) + "\n")
    atomic_write_text(csv, frame.to_csv(index=False))
    return [md, csv]
