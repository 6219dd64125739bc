"""Run one probe measurement in a fresh Python process (the ``rss`` and ``cuda`` probes).

A fresh process starts with no allocator history, no cached kernels and no autotuning results
of earlier cases (TorchBench's rule), so one case's measurement cannot leak into the next. The
child is this interpreter (``sys.executable -c PROGRAM``); the request goes in as one JSON
object on stdin and the child prints its answer as the *last* line of stdout. Anything else it
writes (warnings, tracebacks) goes to stderr; a failing child becomes a one-line
:class:`~profl_core.errors.ConfigError` that carries only the last line of its stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from profl_core.errors import ConfigError

MAX_LINE_CHARS = 300


def last_line(text: str) -> str:
    """The last non-empty line of ``text``, stripped (``""`` when there is none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 3] + "..."


def run_fresh(program: str, request: Mapping[str, Any], *, what: str, timeout_s: float) -> str:
    """Run ``program`` in a fresh interpreter with ``request`` as JSON on stdin.

    Args:
        program: Python source run with ``sys.executable -c``.
        request: JSON-able values the child reads from stdin.
        what: names the child in errors (``"<what> failed: <last stderr line>"``), e.g.
            ``"rss probe: the train process for cnn/full/bs64"``.
        timeout_s: give up on the child after this many seconds.

    Returns:
        The last non-empty line the child printed on stdout (its answer, not cut).

    Raises:
        ConfigError: one line when the child times out, exits non-zero (with the last line of
            its stderr, cut to :data:`MAX_LINE_CHARS`) or prints nothing.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", program],
            input=json.dumps(dict(request)),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{what} took over {timeout_s:.0f} s; use a smaller case") from None
    if done.returncode != 0:
        reason = _cut(last_line(done.stderr)) or f"exit code {done.returncode}, no stderr"
        raise ConfigError(f"{what} failed: {reason}")
    answer = last_line(done.stdout)
    if not answer:
        raise ConfigError(f"{what} printed nothing on stdout")
    return answer
