"""The step options of a case as modifier texts: ``ckpt``, ``amp``, ``accum:k``.

A case's label and key write its step options (``TrainingCase.micro_batches``, ``checkpoint``,
``autocast``) after the base, joined by ``+``, in one canonical order: ``ckpt``, ``amp`` (or
``amp:fp16``), ``accum:k`` (``grow:2+ckpt+accum:4``). The names here are shared by the case
(:mod:`profl_core.memory.case`) and the case-text grammar (:mod:`profl_core.memory.case_text`).
"""

from __future__ import annotations

__all__ = ["ACCUM", "AMP", "AUTOCAST", "CKPT", "MODIFIERS", "modifier_texts"]

ACCUM, CKPT, AMP = "accum", "ckpt", "amp"
#: The modifier names of a case text.
MODIFIERS: tuple[str, ...] = (ACCUM, CKPT, AMP)
#: Autocast dtype (``TrainingCase.autocast``) -> its modifier text.
AUTOCAST: dict[str | None, str] = {None: "", "bfloat16": AMP, "float16": f"{AMP}:fp16"}


def modifier_texts(*, micro_batches: int, checkpoint: bool, autocast: str | None
                   ) -> tuple[str, ...]:
    """Step options as modifier texts in canonical order: ``ckpt``, ``amp`` (or
    ``amp:fp16``), ``accum:k`` (empty for the plain step)."""
    out: list[str] = []
    if checkpoint:
        out.append(CKPT)
    if autocast is not None:
        out.append(AUTOCAST[autocast])
    if micro_batches > 1:
        out.append(f"{ACCUM}:{micro_batches}")
    return tuple(out)
