"""Where round records go: the :class:`RoundSink` protocol and ``rounds.jsonl``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from profl_core.errors import ConfigError
from profl_core.files import atomic_write_text, read_jsonl
from profl_core.fl.types import RoundRecord


class RoundSink(Protocol):
    """Where round records go."""

    def write(self, record: RoundRecord) -> None:
        """Store one record."""
        ...


class JsonlSink:
    """Round records as JSON lines, appended and flushed one per round."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: RoundRecord) -> None:
        """Append one record and flush it to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record_to_json(record)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def kept(self, after_round: int) -> tuple[list[str], str | None]:
        """The lines :meth:`truncate` keeps (rounds ``1 .. after_round``, byte-identical) and
        its note on a dropped torn last line; reads only, so a resume can check the file
        before any work.

        Raises:
            ConfigError: A damaged line but the torn last one, a record without a whole
                ``round``, or kept records that are not exactly rounds ``1 .. after_round``
                (the file does not belong with the checkpoint).
        """
        fix = "restore it, or start fresh in a new folder"
        if not self.path.exists():
            if after_round:
                raise ConfigError(f"{self.path}: missing, but the checkpoint is at round "
                                  f"{after_round}; {fix}")
            return [], None
        read = read_jsonl(self.path, "rounds file", missing=fix, fix=fix)
        keep: list[tuple[int, str]] = []
        for number, record, text in zip(read.lines, read.records, read.texts, strict=True):
            rnd = record.get("round") if isinstance(record, dict) else None
            if isinstance(rnd, bool) or not isinstance(rnd, int):
                raise ConfigError(f"{self.path}: line {number} has no whole round number; {fix}")
            if rnd <= after_round:
                keep.append((rnd, text))
        if [rnd for rnd, _ in keep] != list(range(1, after_round + 1)):
            raise ConfigError(
                f"{self.path}: its records up to round {after_round} are not rounds 1 to "
                f"{after_round}, which the checkpoint holds; {fix}")
        return [text for _, text in keep], read.torn

    def truncate(self, after_round: int) -> str | None:
        """Keep only the records of rounds ``1 .. after_round`` (used when resuming; see
        :meth:`kept`); returns the note on a dropped torn last line, or None."""
        lines, torn = self.kept(after_round)
        if self.path.exists():
            atomic_write_text(self.path, "".join(line + "\n" for line in lines))
        return torn


def record_to_json(record: RoundRecord) -> dict[str, Any]:
    """A JSON-ready dict of a record."""
    data = asdict(record)
    data["participants"] = list(record.participants)
    data["required_bytes"] = list(record.required_bytes)
    data["metrics"] = dict(record.metrics)
    data["dropped"] = [[cid, reason] for cid, reason in record.dropped]
    return data
