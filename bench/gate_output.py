"""What ``profl check`` prints (docs/gate.md): one verdict per case and the report formats.

:func:`outcome` folds the gate's number-by-number :class:`~profl_core.compare.Diff` list into
one :class:`CaseResult` per case (its status and its worst number) and the totals;
:data:`FORMATS` renders that :class:`Outcome`:

* ``text``: one line per case that is not a pass, the totals line, then the gate's hints
  (``--details`` adds the per-block table);
* ``json``: one document (:data:`REPORT_SCHEMA_VERSION`) with every case and the totals;
* ``junit``: JUnit XML, one ``testcase`` per case (``failure`` when it fails, ``skipped``
  when it is new or not comparable);
* ``github``: GitHub workflow commands (``::error`` per failing case, ``::warning`` per case
  not comparable, ``::notice`` per new case), then the totals line.

The exit code does not depend on the format.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from tabulate import tabulate

from profl_core.compare import CASE_METRIC, Diff, Status, failed

#: The version of the ``--format json`` document; bumped when a field changes meaning.
REPORT_SCHEMA_VERSION = 1
MIB = 2**20
#: The rule for "not comparable", as printed by the gate and stated in docs/gate.md.
NOT_COMPARABLE_RULE = (
    "a case is not comparable when its definition hash (SHA-256 of TrainingCase.params() "
    "without fields at their defaults, plus the probe and the gate's thread count) differs "
    "from the baseline's; its numbers are not compared and it neither passes nor fails "
    "(asv's rule)"
)
#: A case's status in every format.
PASS, FAIL, MISSING, NEW, NOT_COMPARABLE = "pass", "fail", "missing", "new", "not-comparable"
#: What a case that is not a pass means, in the text and github formats.
MEANING = {MISSING: "in the baseline, not produced by this run",
           NEW: "not in the baseline, not compared",
           NOT_COMPARABLE: "its definition hash differs from the baseline's, not compared"}


@dataclass(frozen=True)
class CaseResult:
    """One case's verdict and its worst number (``None`` for a missing, new or not comparable
    case): of its failing numbers (else of all), the one that grew most in bytes."""

    key: str
    status: str
    worst: Diff | None

    @property
    def block(self) -> str | None:
        """``block2`` for ``block_peak_bytes:block2:backward``; ``None`` for a step's peak."""
        parts = self.worst.metric.split(":") if self.worst else []
        return parts[1] if len(parts) == 3 else None

    @property
    def phase(self) -> str | None:
        """``backward`` for ``block_peak_bytes:block2:backward``; ``None`` for a step's peak."""
        parts = self.worst.metric.split(":") if self.worst else []
        return parts[2] if len(parts) == 3 else None

    @property
    def where(self) -> str:
        """``block2 backward (block_peak_bytes)`` or ``whole step (peak_bytes)``."""
        if self.worst is None:
            return ""
        place = ("whole step" if not self.block else self.block if self.block == self.phase
                 else f"{self.block} {self.phase}")
        return f"{place} ({self.worst.metric.split(':')[0]})"

    @property
    def change_bytes(self) -> float | None:
        d = self.worst
        return None if d is None or d.baseline is None or d.current is None else (
            d.current - d.baseline)

    def change_text(self) -> str:
        """``+1.234 MiB, +11.11%`` (what is known of it)."""
        d = self.worst
        if d is None:
            return MEANING.get(self.status, "")
        if d.current is None:
            return "number missing from this run"
        change, rel = self.change_bytes or 0.0, d.relative_change
        return f"{change / MIB:+.3f} MiB, " + ("n/a" if rel is None else f"{100 * rel:+.2f}%")

    def line(self) -> str:
        """The case's line in the text format."""
        where = f"  {self.where}" if self.where else ""
        return f"{self.status.upper():<14} {self.key}{where}  {self.change_text()}"


@dataclass(frozen=True)
class Outcome:
    """Everything a format shows: the cases, the totals, the gate's notes and hints."""

    suite: str
    baseline: str
    version: str
    diffs: list[Diff]
    cases: list[CaseResult]
    measured_cases: int
    numbers: int
    within: int
    failing: int
    exit_code: int
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    #: the hints without the case keys (:func:`hints` with ``name_cases=False``)
    unnamed_hints: list[str] = field(default_factory=list)

    @property
    def totals_line(self) -> str:
        return (f"checked {self.numbers} numbers of {self.measured_cases} cases against torch "
                f"{self.version}: {self.within} within tolerance, {self.failing} failing")

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cases)


#: Among numbers that grew by as much, the worst is the whole step's peak, then its heap peak.
STEP_PEAKS = ("peak_bytes", "heap_peak_bytes")


def _worst(diffs: list[Diff]) -> Diff | None:
    """Of the failing numbers (else all), the one that grew most in bytes (then relatively);
    a tie goes to the step's peak (:data:`STEP_PEAKS`), then to the first in metric order. A
    case whose numbers are all unchanged thus reports its step's peak, not a block's."""
    def rise(d: Diff) -> tuple[float, float, int]:
        step = len(STEP_PEAKS) - STEP_PEAKS.index(d.metric) if d.metric in STEP_PEAKS else 0
        if d.current is None or d.baseline is None:
            return (float("inf"), 0.0, step)
        return (d.current - d.baseline, d.relative_change or 0.0, step)

    pool = failed(diffs) or diffs
    return max(pool, key=rise) if pool else None


def case_results(diffs: list[Diff]) -> list[CaseResult]:
    """One verdict per case key, sorted by key."""
    by_key: dict[str, list[Diff]] = {}
    for d in diffs:
        by_key.setdefault(d.key, []).append(d)
    results = []
    whole = {Status.MISSING: MISSING, Status.NEW: NEW, Status.NOT_COMPARABLE: NOT_COMPARABLE}
    for key in sorted(by_key):
        mine = by_key[key]
        if len(mine) == 1 and mine[0].metric == CASE_METRIC:
            results.append(CaseResult(key, whole[mine[0].status], None))
        else:
            results.append(CaseResult(key, FAIL if failed(mine) else PASS, _worst(mine)))
    return results


def outcome(diffs: list[Diff], *, suite: str, baseline: str, version: str,
            measured_cases: int, notes: list[str], refresh: str) -> Outcome:
    """The :class:`Outcome` of a check; exit code 1 when a number fails or a case is missing.
    ``refresh`` is the command that refreshes the baseline (for the hints)."""
    numbers = [d for d in diffs if d.metric != CASE_METRIC]
    return Outcome(
        suite=suite, baseline=baseline, version=version, diffs=diffs,
        cases=case_results(diffs), measured_cases=measured_cases, numbers=len(numbers),
        within=sum(d.status == Status.OK for d in numbers),
        failing=sum(d.status in (Status.REGRESSION, Status.MISSING) for d in numbers),
        exit_code=1 if failed(diffs) else 0, notes=notes, hints=hints(diffs, refresh),
        unnamed_hints=hints(diffs, refresh, name_cases=False))


# ----------------------------------------------------------------------------------- hints


def cases_with(diffs: list[Diff], status: Status) -> list[str]:
    return sorted({d.key for d in diffs if d.status == status})


def listed(keys: list[str], most: int = 8) -> str:
    shown = ", ".join(keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def hints(diffs: list[Diff], refresh: str, *, name_cases: bool = True) -> list[str]:
    """The verdict's lines after the totals: what is not comparable, new, missing or
    regressed, and the command that refreshes the baseline where that is the fix.

    ``name_cases=False`` leaves the case keys out (the ``github`` format has already given
    each such case its own workflow command): the counts, the rule and the commands stay.
    """
    def which(keys: list[str]) -> str:
        return f" ({listed(keys)})" if name_cases else ""

    def count(keys: list[str], noun: str) -> str:
        return f"{len(keys)} {noun}" + ("" if len(keys) == 1 else "s")

    lines = []
    redefined = cases_with(diffs, Status.NOT_COMPARABLE)
    if redefined:
        lines.append(f"WARNING: {count(redefined, 'case')} not comparable{which(redefined)}: "
                     f"{NOT_COMPARABLE_RULE}. If the new definition is intended, refresh the "
                     f"baseline: `{refresh}`")
    new = cases_with(diffs, Status.NEW)
    if new:
        lines.append(f"note: {count(new, 'new case')} not in the baseline{which(new)}, not "
                     f"compared; add them with `{refresh}`")
    missing = cases_with(diffs, Status.MISSING)
    if missing:
        lines.append(f"FAIL: {count(missing, 'baseline case')} missing from this run"
                     f"{which(missing)}; if they were removed on purpose, drop them with "
                     f"`{refresh}`")
    regressed = sorted({d.key for d in failed(diffs) if d.metric != CASE_METRIC})
    if regressed:
        lines.append(f"FAIL: memory regression in {', '.join(regressed)}" if name_cases
                     else f"FAIL: memory regression in {count(regressed, 'case')}")
    elif not failed(diffs) and any(d.status == Status.IMPROVED for d in diffs):
        lines.append(f"note: some numbers improved beyond tolerance; lock them in with "
                     f"`{refresh}`")
    return lines


# --------------------------------------------------------------------------------- formats


def render(diffs: list[Diff], *, show_all: bool) -> str:
    """The per-block table (only changed rows unless ``show_all``)."""
    rows = [
        [d.key, d.metric,
         "" if d.baseline is None else f"{d.baseline / MIB:.3f}",
         "" if d.current is None else f"{d.current / MIB:.3f}",
         "" if d.relative_change is None else f"{100 * d.relative_change:+.2f}%",
         "" if d.metric == CASE_METRIC else f"{100 * d.tolerance:.1f}%", str(d.status)]
        for d in diffs if show_all or d.status != Status.OK
    ]
    headers = ["case", "metric", "baseline MiB", "current MiB", "change", "tolerance", "status"]
    return tabulate(rows, headers=headers, tablefmt="github")


def as_text(o: Outcome, *, details: bool = False, show_all: bool = False) -> str:
    """The notes, one line per case that is not a pass, the totals line, the hints."""
    lines = list(o.notes)
    if details or show_all:
        lines.append(render(o.diffs, show_all=show_all))
    lines += [c.line() for c in o.cases if c.status != PASS]
    return "\n".join([*lines, o.totals_line, *o.hints])


def _case_json(c: CaseResult) -> dict[str, object]:
    d = c.worst
    return {"key": c.key, "status": c.status,
            "metric": None if d is None else d.metric, "block": c.block, "phase": c.phase,
            "baseline_bytes": None if d is None else d.baseline,
            "current_bytes": None if d is None else d.current,
            "change_bytes": c.change_bytes,
            "relative_change": None if d is None else d.relative_change,
            "tolerance": None if d is None else d.tolerance}


_BYTES = {"type": ["integer", "number", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}
#: The JSON Schema (draft 2020-12) of the ``--format json`` document, version
#: :data:`REPORT_SCHEMA_VERSION`. A case not compared (missing, new, not comparable) has every
#: number ``null``; a compared one (pass, fail) names its worst number (:func:`_worst`).
REPORT_SCHEMA: dict[str, object] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "profl check report",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "suite", "baseline", "torch", "exit_code", "totals", "notes",
                 "cases"],
    "properties": {
        "schema_version": {"const": REPORT_SCHEMA_VERSION},
        "suite": {"type": "string"},
        "baseline": {"type": "string"},
        "torch": {"type": "string"},
        "exit_code": {"enum": [0, 1]},
        "totals": {
            "type": "object", "additionalProperties": False,
            "required": ["cases", "numbers", "within_tolerance", "failing_numbers", "pass",
                         "fail", "missing", "new", "not_comparable"],
            "properties": {name: {"type": "integer", "minimum": 0} for name in (
                "cases", "numbers", "within_tolerance", "failing_numbers", "pass", "fail",
                "missing", "new", "not_comparable")},
        },
        "notes": {"type": "array", "items": {"type": "string"}},
        "cases": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["key", "status", "metric", "block", "phase", "baseline_bytes",
                         "current_bytes", "change_bytes", "relative_change", "tolerance"],
            "properties": {
                "key": {"type": "string"},
                "status": {"enum": [PASS, FAIL, MISSING, NEW, NOT_COMPARABLE]},
                "metric": _NULLABLE_STR, "block": _NULLABLE_STR, "phase": _NULLABLE_STR,
                "baseline_bytes": _BYTES, "current_bytes": _BYTES, "change_bytes": _BYTES,
                "relative_change": {"type": ["number", "null"]},
                "tolerance": {"type": ["number", "null"]},
            },
            "if": {"properties": {"status": {"enum": [PASS, FAIL]}}},
            "then": {"properties": {"metric": {"type": "string"},
                                    "baseline_bytes": {"type": ["integer", "number"]}}},
            "else": {"properties": {name: {"type": "null"} for name in (
                "metric", "block", "phase", "baseline_bytes", "current_bytes", "change_bytes",
                "relative_change", "tolerance")}},
        }},
    },
}


def as_json(o: Outcome, **_: bool) -> str:
    """The ``--format json`` document."""
    doc = {
        "schema_version": REPORT_SCHEMA_VERSION, "suite": o.suite, "baseline": o.baseline,
        "torch": o.version, "exit_code": o.exit_code,
        "totals": {"cases": len(o.cases), "numbers": o.numbers, "within_tolerance": o.within,
                   "failing_numbers": o.failing,
                   **{s.replace("-", "_"): o.count(s)
                      for s in (PASS, FAIL, MISSING, NEW, NOT_COMPARABLE)}},
        "notes": [*o.notes, *o.hints],
        "cases": [_case_json(c) for c in o.cases],
    }
    return json.dumps(doc, indent=1)


def as_junit(o: Outcome, **_: bool) -> str:
    """JUnit XML: one testcase per case; failure (fail, missing) or skipped (new, not
    comparable)."""
    skipped = o.count(NEW) + o.count(NOT_COMPARABLE)
    failures = o.count(FAIL) + o.count(MISSING)
    root = ET.Element("testsuites", name="profl check", tests=str(len(o.cases)),
                      failures=str(failures), errors="0", skipped=str(skipped))
    suite = ET.SubElement(root, "testsuite", name=o.suite, tests=str(len(o.cases)),
                          failures=str(failures), errors="0", skipped=str(skipped))
    for c in o.cases:
        case = ET.SubElement(suite, "testcase", classname=f"profl.check.{o.suite}", name=c.key)
        message = f"{c.where} {c.change_text()}".strip()
        if c.status in (FAIL, MISSING):
            failure = ET.SubElement(case, "failure", message=message,
                                    type="regression" if c.status == FAIL else "missing")
            failure.text = message
        elif c.status in (NEW, NOT_COMPARABLE):
            ET.SubElement(case, "skipped", message=f"{c.status}: {message}")
    out = ET.SubElement(suite, "system-out")
    out.text = "\n".join([*o.notes, o.totals_line, *o.hints])
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def _escape(text: str, *, prop: bool = False) -> str:
    """A workflow command's message (or, ``prop``, property) escaped as the runner reads it."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def as_github(o: Outcome, **_: bool) -> str:
    """``::error`` per failing or missing case, ``::warning`` per case not comparable,
    ``::notice`` per new case, then the totals line and the hints without the case keys
    (each case is named once, by its own command)."""
    command = {FAIL: ("error", "memory regression"), MISSING: ("error", "missing case"),
               NOT_COMPARABLE: ("warning", "not comparable"), NEW: ("notice", "new case")}
    lines = [f"::notice::{_escape(note)}" for note in o.notes]
    for c in o.cases:
        if c.status in command:
            level, what = command[c.status]
            message = f"{c.key}: {c.where} {c.change_text()}".replace("  ", " ")
            lines.append(f"::{level} title={_escape(f'{what} {c.key}', prop=True)}::"
                         f"{_escape(message)}")
    return "\n".join([*lines, o.totals_line, *o.unnamed_hints])


FORMATS: dict[str, Callable[..., str]] = {
    "text": as_text, "json": as_json, "junit": as_junit, "github": as_github}
