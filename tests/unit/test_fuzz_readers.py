"""Every file-reading entry point against generated garbage (Hypothesis, derandomized).

Each reader gets four kinds of input, built from one valid file of its format: random bytes,
the valid file truncated, the valid file with bytes overwritten, and the valid document with
one node replaced or removed (wrong types, bools for ints, huge numbers, NaN, empty and nested
containers), written back as JSON or TOML. The oracle is the contract of the guarded layer
(``profl_core.files``): the reader returns, or it raises a :class:`ConfigError` whose message is
one line naming the file; no other exception escapes. What a reader accepts must also be
usable by the code that reads it next (summaries, reports, resume), so those run on it too.
``test_cli_*`` do the same through ``profl`` and check exit 2, one stderr line and that no file
of the folder changed. ``EXAMPLES`` inputs are tried per reader and kind of input.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main
from bench.gate import read_baseline, torch_minor
from bench.memory_measure import read_case_report
from bench.paths import DEVICES_DIR, SUITES_DIR
from bench.run_files import check_resume, read_rounds, read_run_result, run_record
from bench.run_settings import TrainingConfig
from bench.run_summary import step_summary, summary_records
from bench.suites import load_suite
from profl_core.devices import MIB, load_fleet, load_profile, load_profiles
from profl_core.errors import ConfigError
from profl_core.fl import load_checkpoint, restore_checkpoint, save_checkpoint
from profl_core.memory import TrainingCase, measure
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec
from profl_core.results import Record, ResultFile, read_result, write_result

PROFILES = DEVICES_DIR / "profiles"
#: Generated inputs per reader and kind of input (4 kinds, so 4 x EXAMPLES per reader).
EXAMPLES = 50
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------ valid files

PROFILE = """\
name = "fuzz"
kind = "phone"
ram_mib = 3000
usable_fraction = 0.3
runtime_overhead_mib = 100
shared_gpu_memory = false
source = "hand-made test profile"
"""

FLEET = """\
name = "fuzz"
kind = "explicit"
budget_unit = "MiB"
[[devices]]
profile = "rpi4-4gb"
count = 2
[[devices]]
budget = 512
[[devices]]
budget = 64
count = 3
"""

RELATIVE_FLEET = """\
name = "fuzz"
kind = "tiers"
count = 8
[[tiers]]
name = "small"
fraction = 0.25
[[tiers]]
name = "large"
fraction = 1.0
"""

SUITE = (SUITES_DIR / "smoke.toml").read_text(encoding="utf-8")


def _round(rnd: int, accuracy: float | None) -> dict[str, Any]:
    return {"round": rnd, "stage": "grow", "step": 1, "submodel": "grow:1",
            "accuracy": accuracy, "loss": 1.0 if accuracy is not None else None,
            "train_loss": 1.5, "participants": [0, 2], "eligible_share": 0.5,
            "required_bytes": [1000, 1000], "wall_s": 0.1, "metrics": {"em": 0.4},
            "dropped": [[1, "budget"]], "step_end": "em" if rnd == 3 else None}


ROUNDS = "".join(json.dumps(_round(r, 0.1 * r if r != 2 else None)) + "\n" for r in (1, 2, 3))

CONFIG = TrainingConfig(method="fedavg", dataset="synthetic", width=0.25, clients=4,
                        per_round=2, rounds=3, partition="iid")


def _result_text() -> str:
    result = ResultFile(
        suite="fuzz", created_utc="2024-01-01T00:00:00Z",
        records=(Record(key="k", metric="final_accuracy", value=0.5, unit="ratio"),
                 Record(key="k", metric="rounds", value=3.0, unit="count", case_hash="ab")),
        provenance={"machine": "m"},
        extra={"config": CONFIG.to_json(), "status": "completed", "fleet": "relative-uniform",
               "target_accuracy": 0.5})
    with tempfile.TemporaryDirectory() as folder:
        write_result(Path(folder) / "r.json", result)
        return (Path(folder) / "r.json").read_text(encoding="utf-8")


RESULT = _result_text()
BASELINE = json.dumps({
    "schema_version": 1, "suite": "memory-ci",
    "tolerances": {"peak_bytes": 0.005, "block_peak_bytes": 0.005},
    "torch": {torch_minor(): {"updated_utc": "x", "probe": "predict", "batch_size": 16,
                              "cases": {"cnn/full/bs16": {"peak_bytes": 123456,
                                                          "block_peak_bytes:block1": 1000}},
                              "definitions": {"cnn/full/bs16": "0" * 64}}},
}, indent=1)
RUN_JSON = json.dumps(run_record(CONFIG), indent=1)
CASE = TrainingCase(model=native_spec("cnn", width=0.25), kind="full", batch_size=2)
CASE_REPORT = measure(CASE, probe="predict").to_json()


def _profl() -> ProFL:
    return ProFL(ProFLConfig(rounds=10, per_round=2, local_epochs=1, batch_size=16,
                             schedule="fixed"))


FRESH = _profl().init_state(build_model(native_spec("cnn", width=0.25, num_classes=4),
                                        generator=torch.Generator().manual_seed(0)),
                            np.random.default_rng(0))


def _checkpoint_payload() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        save_checkpoint(path, 2, FRESH, "profl", np.random.default_rng(0),
                        loop={"step": ["grow", 4, "grow:4"], "reference_loss": 1.5})
        return torch.load(path, weights_only=True)


CHECKPOINT = _checkpoint_payload()


def _checkpoint_bytes(payload: Any) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.pt"
        torch.save(payload, path)
        return path.read_bytes()


# ------------------------------------------------------------------------------ the oracle


def check_reader(read: Callable[[Path], Any], path: Path) -> None:
    """``read(path)`` returns, or raises a one-line ConfigError that names the file."""
    try:
        read(path)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message, message
        assert path.name in message, message


# ------------------------------------------------------------------------------ generators

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 10**11, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf]),
    st.text(max_size=12),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@st.composite
def mutated(draw: st.DrawFn, doc: Any, values: st.SearchStrategy[Any] = VALUES) -> Any:
    """``doc`` with one node replaced by a generated value, or one key removed."""
    if isinstance(doc, dict) and doc and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(doc, key=str)))
        if draw(st.integers(0, 4)) == 0:
            return {k: v for k, v in doc.items() if k != key}
        return {**doc, key: draw(mutated(doc[key], values))}
    if isinstance(doc, list) and doc and draw(st.booleans()):
        i = draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], draw(mutated(doc[i], values)), *doc[i + 1:]]
    return draw(values)


def toml_value(value: Any) -> str:
    """``value`` as an inline TOML value (None, which TOML lacks, as an empty string)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                           for k, v in value.items()) + "}"


def toml_text(doc: Any) -> str:
    """A TOML document of ``doc`` (a non-table top level becomes one ``value = ...`` key)."""
    if not isinstance(doc, dict):
        doc = {"value": doc}
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in doc.items())


def garbage(valid: bytes, document: st.SearchStrategy[bytes]) -> dict[str, Any]:
    """The four kinds of input for one reader, as Hypothesis strategies of bytes."""
    return {
        "random bytes": st.binary(max_size=600),
        "truncated": st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        "overwritten": st.lists(st.tuples(st.integers(0, len(valid) - 1),
                                          st.integers(0, 255)), min_size=1, max_size=4).map(
            lambda edits: _overwrite(valid, edits)),
        "wrong values": document,
    }


def _overwrite(valid: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(valid)
    for at, byte in edits:
        data[at] = byte
    return bytes(data)


def json_kinds(valid: str) -> dict[str, Any]:
    doc = json.loads(valid)
    return garbage(valid.encode(), mutated(doc).map(lambda d: json.dumps(d).encode()))


def toml_kinds(valid: str) -> dict[str, Any]:
    import tomllib

    doc = tomllib.loads(valid)
    assert tomllib.loads(toml_text(doc)) == doc  # the writer round-trips the valid file
    return garbage(valid.encode(), mutated(doc).map(lambda d: toml_text(d).encode()))


def fuzz(kinds: dict[str, Any], name: str, read: Callable[[Path], Any]) -> Callable[..., None]:
    """A test that writes each generated input to ``name`` and checks ``read`` on it."""

    @pytest.mark.parametrize("kind", sorted(kinds))
    @FUZZ
    @given(data=st.data())
    def test(kind: str, data: st.DataObject) -> None:
        content = data.draw(kinds[kind], label=kind)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(content)
            check_reader(read, path)

    return test


# ------------------------------------------------------------------------------ the readers


def _fleet(path: Path) -> None:
    load_fleet(path, PROFILE_SET, reference_peak_bytes=64 * MIB)


def _rounds(path: Path) -> None:
    rounds = read_rounds(path)
    step_summary(rounds)  # what is accepted is usable by the summaries
    summary_records(rounds, "k", completed=False, full_bytes=10_000)
    if any(r["accuracy"] is not None for r in rounds):
        summary_records(rounds, "k", target_accuracy=0.2)


def _run_result(path: Path) -> None:
    from bench.run_frames import _run_info

    _run_info(path.parent, read_run_result(path.parent))


def _baseline(path: Path) -> None:
    from profl_core.compare import compare

    data = read_baseline(path, torch_minor())
    entry = data["torch"].get(torch_minor())
    if entry is not None:
        compare(entry["cases"], entry["cases"], tolerances=data.get("tolerances", {}))


def _run_json(path: Path) -> None:
    check_resume(CONFIG, path.parent, warn=lambda line: None)


def _checkpoint(path: Path) -> None:
    restore_checkpoint(path, load_checkpoint(path), method=_profl(), fresh=FRESH,
                       np_rng=np.random.default_rng(0), rounds=10)


PROFILE_SET = load_profiles(PROFILES)

test_profile_reader = fuzz(toml_kinds(PROFILE), "fuzz.toml", load_profile)
test_fleet_reader = fuzz(toml_kinds(FLEET), "fuzz.toml", _fleet)
test_relative_fleet_reader = fuzz(toml_kinds(RELATIVE_FLEET), "fuzz.toml", _fleet)
test_suite_reader = fuzz(toml_kinds(SUITE), "fuzz.toml", lambda path: load_suite(str(path)))
test_result_file_reader = fuzz(json_kinds(RESULT), "result.json", read_result)
test_run_result_reader = fuzz(json_kinds(RESULT), "result.json", _run_result)
test_rounds_reader = fuzz(garbage(ROUNDS.encode(), st.lists(mutated(_round(1, 0.5)), min_size=1,
                                                            max_size=3).map(
    lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode())), "rounds.jsonl",
    _rounds)
test_baseline_reader = fuzz(json_kinds(BASELINE), "baseline.json", _baseline)
test_run_record_reader = fuzz(json_kinds(RUN_JSON), "run.json", _run_json)
test_memory_case_reader = fuzz(json_kinds(CASE_REPORT), "case.json",
                               lambda path: read_case_report(path, CASE, "predict"))
TENSORS = st.builds(lambda n, k: torch.zeros(n, dtype=[torch.float32, torch.int64][k]),
                    st.integers(0, 3), st.integers(0, 1))
test_checkpoint_reader = fuzz(
    garbage(_checkpoint_bytes(CHECKPOINT),
            mutated(CHECKPOINT, st.one_of(VALUES, TENSORS)).map(_checkpoint_bytes)),
    "checkpoint.pt", _checkpoint)


# ------------------------------------------------------------------------------ through the CLI


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check_cli(args: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``profl ARGS`` exits 2 with one ``profl: error:`` line and leaves ``folder`` as it
    was, byte for byte."""
    before = _hashes(folder)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("profl: error: ")
    assert _hashes(folder) == before


BYTES = st.binary(max_size=400)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fedavg run on synthetic data stopped after round 2 of 3 (checkpoint at round 2)."""
    from bench.training import run_training

    out = tmp_path_factory.mktemp("interrupted") / "run"

    def stop(record: Any) -> None:
        if record.round == 2:
            raise KeyboardInterrupt

    config = TrainingConfig(**{**CONFIG.to_json(), "checkpoint_every": 1,
                               "samples_per_client": 16, "test_samples": 32, "options": {}})
    with pytest.raises(KeyboardInterrupt):
        run_training(config, out, progress=stop)
    return out


RESUME = ["train", "--method", "fedavg", "--dataset", "synthetic", "--width", "0.25",
          "--clients", "4", "--per-round", "2", "--rounds", "3", "--partition", "iid",
          "--samples-per-client", "16", "--test-samples", "32", "--checkpoint-every", "1",
          "--resume"]


@pytest.mark.parametrize("name", ["run.json", "checkpoint.pt", "rounds.jsonl"])
@settings(FUZZ, max_examples=EXAMPLES // 3)
@given(content=BYTES)
def test_cli_resume_with_a_damaged_file(
    name: str, content: bytes, interrupted_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``profl train --resume`` on a run folder one of whose files is garbage."""
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        run.mkdir()
        for path in interrupted_run.iterdir():
            (run / path.name).write_bytes(path.read_bytes())
        (run / name).write_bytes(content)
        check_cli([*RESUME, "--out", str(run)], run, capsys)


@pytest.mark.parametrize("command", ["devices", "bench", "check", "report"])
@settings(FUZZ, max_examples=EXAMPLES // 3)
@given(content=BYTES)
def test_cli_reads_a_garbage_file(
    command: str, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """A profile, a suite, a baseline and a run's result.json of random bytes."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if command == "devices":
            (folder / "fleets").mkdir()
            (folder / "profiles").mkdir()
            (folder / "profiles" / "x.toml").write_bytes(content)
            args = ["devices", "--profiles", str(folder / "profiles"), "--fleets",
                    str(folder / "fleets")]
        elif command == "bench":
            (folder / "s.toml").write_bytes(content)
            args = ["bench", str(folder / "s.toml"), "--out", str(folder / "out")]
        elif command == "check":
            (folder / "b.json").write_bytes(content)
            args = ["check", "--baseline", str(folder / "b.json")]
        else:
            run = folder / "runs" / "fedavg-iid-s0"
            run.mkdir(parents=True)
            (run / "result.json").write_bytes(content)
            args = ["report", str(folder)]
        check_cli(args, folder, capsys)
