"""Every shell command shown in ``README.md`` and ``docs/*.md`` runs here, on tiny inputs.

The commands are read from the ```` ```bash ```` (``sh``, ``shell``, ``console``) blocks of the
pages. :data:`COMMANDS` maps each of them to how it is checked:

* :class:`Run`: the command runs as documented, with tiny inputs appended (argparse keeps the
  last value of an option, so ``--rounds 2`` after ``--rounds 150`` wins: synthetic data, a
  few clients and rounds), in one temporary workspace that holds the files the pages define
  (``mynet.py``, ``ci/memory.toml``, ``my-suite.toml`` made tiny, ...). ``profl`` commands run
  in this process through :func:`bench.cli.main` (fast); the slow planner and ``pytest`` run as
  subprocesses started when the module starts, so they overlap the rest. Each asserts the exit
  code and one fact of the output.
* :class:`NotRun`: a command that cannot run in a test (``make bench`` takes 20 minutes, ``make
  test`` is this test run, a Ray cluster, the network, a GPU), with its reason and a check that
  the reason holds (the Makefile target exists, the covering test exists, the arguments parse).

A command in the docs that :data:`COMMANDS` does not know fails
:func:`test_every_documented_command_is_in_the_table`; so does an entry no page shows any more.
The module needs neither the network nor Fashion-MNIST; it takes 80-95 s on a shared 2-core
machine (the planner, about 20 s, runs beside the rest).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.cli import build_parser, main
from tests.conftest import FLEET, PROFILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
#: A fenced block that defines a file starts with a comment naming it: ``# ci/memory.toml``.
FILE_HEADER = re.compile(r"#\s*([\w./-]+\.(?:py|toml))\s*$")
#: Appended to ``profl train``: the synthetic source, 10 clients of 8 samples, 2 rounds.
TINY_TRAIN = ("--dataset", "synthetic", "--clients", "10", "--per-round", "2",
              "--samples-per-client", "8", "--test-samples", "32", "--rounds", "2",
              "--local-epochs", "1")
#: The same for a suite's ``[accuracy]`` table (one seed, in this process).
TINY_SUITE = {"dataset": '"synthetic"', "clients": "10", "per_round": "2",
              "samples_per_client": "8", "test_samples": "32", "rounds": "2",
              "local_epochs": "1", "seeds": "[0]", "workers": "1"}
TIMEOUT_S = 240


# ------------------------------------------------------------------------------ the pages


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page."""

    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    lines: tuple[str, ...]


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block (```` ```lang ```` ... ```` ``` ````) of ``page``."""
    blocks: list[Block] = []
    opened: tuple[int, str, str] | None = None  # line, fence indent, language
    body: list[str] = []
    for number, text in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        stripped = text.strip()
        if opened is None:
            if stripped.startswith("```"):
                indent = text[: len(text) - len(text.lstrip())]
                opened, body = (number, indent, stripped[3:].strip().lower()), []
        elif stripped == "```":
            blocks.append(Block(page, opened[0], opened[2], tuple(body)))
            opened = None
        else:
            body.append(text.removeprefix(opened[1]))
    return blocks


def shell_commands(block: Block) -> list[str]:
    """The block's commands in canonical form (``shlex.join`` of the tokens, comments and line
    continuations gone); a ``console`` block's commands are its ``$ `` lines."""
    commands: list[str] = []
    pending = ""
    for text in block.lines:
        if block.language == "console":
            if not text.startswith("$ "):
                continue
            text = text[2:]
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        tokens = shlex.split(pending + text, comments=True)
        pending = ""
        if tokens:
            commands.append(shlex.join(tokens))
    return commands


def documented_commands() -> dict[str, list[str]]:
    """Every command of the pages, with where it is shown (``README.md:20``)."""
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for block in fenced_blocks(page):
            if block.language in SHELL_LANGUAGES:
                for command in shell_commands(block):
                    where = f"{page.relative_to(REPO)}:{block.line}"
                    found.setdefault(command, []).append(where)
    return found


def documented_files() -> dict[str, str]:
    """The files the pages define: ``{path: text}`` of every block whose first line is a
    comment naming a ``.py`` or ``.toml`` file."""
    files: dict[str, str] = {}
    for page in PAGES:
        for block in fenced_blocks(page):
            match = FILE_HEADER.fullmatch(block.lines[0].strip()) if block.lines else None
            if match is None or block.language not in ("python", "toml"):
                continue
            text = "\n".join(block.lines) + "\n"
            assert files.setdefault(match.group(1), text) == text, (
                f"{match.group(1)} is shown twice with different text")
    return files


def tiny_suite(text: str) -> str:
    """A suite's text with its ``[accuracy]`` settings replaced by :data:`TINY_SUITE`."""
    head, sep, rest = text.partition("[accuracy]\n")
    assert sep, "the suite has no [accuracy] table"
    table, sub, tail = rest.partition("\n[")
    for key, value in TINY_SUITE.items():
        line = f"{key} = {value}"
        table, hits = re.subn(rf"^{key} = .*$", line, table, flags=re.MULTILINE)
        if not hits:
            table = f"{line}\n{table}"
    return head + sep + table + sub + tail


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Run:
    """Run the command (plus ``extra``) in the workspace: exit ``code``, ``fact`` in its output.

    ``needs``: documented commands that must have run first (in the same workspace);
    ``setup``: prepares the workspace after them; ``background``: a subprocess started when
    the module starts (slow commands, so they overlap the others)."""

    fact: str
    extra: tuple[str, ...] = ()
    code: int = 0
    needs: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    background: bool = False


@dataclass(frozen=True)
class NotRun:
    """Not run in a test, for ``reason``; ``check`` (given the repository root) asserts that
    the reason holds. A ``profl`` command's arguments must parse besides."""

    reason: str
    check: Callable[[Path], None]


def makefile_target(target: str, *recipes: str) -> Callable[[Path], None]:
    """A check: the Makefile has ``target`` and its recipe contains one of ``recipes``."""
    def check(repo: Path) -> None:
        text = (repo / "Makefile").read_text(encoding="utf-8")
        match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.MULTILINE)
        assert match is not None, f"the Makefile has no target {target!r}"
        assert any(r in match.group(1) for r in recipes), (
            f"make {target} runs none of {recipes}")
    return check


def covered_by(test: str, text: str) -> Callable[[Path], None]:
    """A check: the test file ``test`` exists and contains ``text``."""
    def check(repo: Path) -> None:
        path = repo / test
        assert path.is_file(), f"{test} is gone"
        assert text in path.read_text(encoding="utf-8"), f"{test} no longer contains {text!r}"
    return check


def ray_extra(repo: Path) -> None:
    """The ``ray`` extra exists and the Ray backend's tests do."""
    assert re.search(r'^ray = \["ray', (repo / "pyproject.toml").read_text(encoding="utf-8"),
                     flags=re.MULTILINE), "pyproject.toml has no ray extra"
    covered_by("tests/integration/test_fl_backends.py", "def local_ray")(repo)


def flower_extra(repo: Path) -> None:
    """The ``flower`` extra pins flwr and the flower env runs tests/flower."""
    assert 'flower = ["flwr[simulation]==1.42.0"]' in (repo / "pyproject.toml").read_text(
        encoding="utf-8"), "pyproject.toml has no flower extra pinning flwr 1.42.0"
    assert "[testenv:flower]" in (repo / "tox.ini").read_text(encoding="utf-8")
    covered_by("tests/flower/test_strategy.py", "run_simulation(")(repo)


def committed_gate(repo: Path) -> None:
    """The default gate's suite and a baseline entry for this torch version exist."""
    from bench.gate import torch_minor

    assert (repo / "bench" / "suites" / "memory-ci.toml").is_file()
    baseline = json.loads((repo / "results" / "baselines" / "memory-ci.json").read_text())
    assert torch_minor() in baseline["torch"], f"no baseline entry for torch {torch_minor()}"
    covered_by("tests/unit/bench/test_check_gate.py", 'main(["check"')(repo)


def copy_run(source: str, target: str) -> Callable[[Path], None]:
    """Setup: a second run folder, as if the suite had run again into ``target``."""
    def setup(work: Path) -> None:
        if not (work / target).exists():
            shutil.copytree(work / source, work / target)
    return setup


TRAIN_PROFL = "profl train --method profl --model cnn --width 0.25 --rounds 150 --out runs/profl"
PLAN = ("profl plan --model cnn --width 0.25 --batch-size 64 --fleet relative-uniform "
        "--out plan.json")
GATE = "PYTHONPATH=. profl check --suite ci/memory.toml --baseline ci/memory.json"
SUITE_RUN = "profl bench my-suite.toml --out runs/ablation"

#: Every command the pages show, and how this module checks it. Keys are the commands in
#: canonical form (:func:`shell_commands`): a new command in the docs needs a line here.
COMMANDS: dict[str, Run | NotRun] = {
    # README.md: the two commands, the package, the tour
    "make test": NotRun("the test run itself", makefile_target("test", "pytest", "PYTEST")),
    "make bench": NotRun("the default suite: about 20 minutes on 2 cores",
                         makefile_target("bench", "profl bench $(SUITE)")),
    "profl em-study --partitions iid dirichlet:0.5 --seeds 0 1 2 --step-rounds 60": Run(
        "wrote", extra=("--suite", "smoke", "--partitions", "iid", "--seeds", "0",
                        "--step-rounds", "4", "--workers", "1")),
    "make gpu-check": NotRun("needs a CUDA device (exit 2 without one)",
                             makefile_target("gpu-check", "gpu_check", "gpu-check")),
    "pip install .": NotRun("tests/integration/test_wheel.py builds, installs and runs the wheel",
                            covered_by("tests/integration/test_wheel.py", "pip")),
    "profl trace --model resnet18 --batch-size 64 --case grow:2": Run(
        "tensor peak 126.30 MiB at block2 (backward)"),
    PLAN: Run("wrote plan.json", background=True),
    "profl check": NotRun(
        "measures the 238 memory-ci cases (about 3 minutes); the same gate runs on a user's "
        "suite below, and tests/unit/bench/test_check_gate.py gates the shipped one",
        committed_gate),
    TRAIN_PROFL: Run("final accuracy", extra=TINY_TRAIN),
    "profl bench smoke": NotRun(
        "about a minute and a half; tests/integration/test_bench_suite.py runs it end to end",
        covered_by("tests/integration/test_bench_suite.py", 'main(["bench", "smoke"')),
    # docs/memory.md
    "profl trace --model cnn --case grow:3 --probe heap --threads 2": Run(
        "cnn/grow:3/bs64  probe=heap"),
    "profl trace --model resnet34 --case grow:4 --foreach": Run("resnet34/grow:4/bs64/foreach"),
    "profl memory --model cnn --batch-size 32 --out runs/memory": Run(
        "wrote runs/memory/result.json"),
    "profl devices": Run("relative-uniform"),
    "profl trace --model cnn --case grow:2+ckpt+accum:4": Run("cnn/grow:2+ckpt+accum:4/bs64"),
    # docs/models.md
    "profl models": Run("vit"),
    "PYTHONPATH=. profl trace --model mynet:build --blocks stem,layer1,layer2-layer3,head "
    "--case grow:2 --batch-size 32": Run("mynet:build@b3-e6c58c1d/grow:2/bs32"),
    "profl trace --model torchvision:mobilenet_v3_small --case grow:2 --batch-size 8": Run(
        "torchvision:mobilenet_v3_small/grow:2/bs8"),
    "profl data fetch fashion-mnist --data-dir data": NotRun(
        "downloads from the network; the Makefile's data target runs it",
        makefile_target("data", "profl data fetch fashion-mnist --data-dir data")),
    "profl data partition --clients 100 --partition dirichlet:0.5": Run(
        "label skew", extra=("--dataset", "synthetic")),
    # docs/training.md
    "profl train --method profl --model cnn --width 0.25 --clients 20 --per-round 6 "
    "--samples-per-client 200 --rounds 150 --local-epochs 1 --lr 0.05 --seed 0 "
    "--out runs/profl-s0": Run("final accuracy", extra=TINY_TRAIN),
    "profl train --method fedavg --em-window 10": Run(
        "profl: error: --em-window is a profl/profl-accum option, not fedavg's", code=2),
    TRAIN_PROFL + " --resume": Run("final accuracy", extra=TINY_TRAIN, needs=(TRAIN_PROFL,)),
    "pip install -e '.[ray]'": NotRun("installs the ray extra (make test installs it with dev)",
                                      ray_extra),
    "profl train --backend ray --model cnn --width 0.25 --rounds 20": NotRun(
        "starts Ray; tests/integration/test_fl_backends.py runs the Ray backend", ray_extra),
    "ray start --head --port=6379": NotRun("needs a Ray cluster", ray_extra),
    "ray start --address=HEAD:6379": NotRun("needs a Ray cluster", ray_extra),
    "profl train --backend ray --address HEAD:6379 --rounds 100": NotRun(
        "needs a Ray cluster", ray_extra),
    "ray stop": NotRun("needs a Ray cluster", ray_extra),
    # docs/baselines.md
    "profl train --method heterofl --model cnn --width 0.25 --rounds 150 --out runs/heterofl":
        Run("final accuracy", extra=TINY_TRAIN),
    # docs/suites.md
    SUITE_RUN: Run("wrote runs/ablation/report.md"),
    SUITE_RUN + " --resume": Run("wrote runs/ablation/report.md", needs=(SUITE_RUN,)),
    "profl report runs/ablation": Run("wrote runs/ablation/report.md", needs=(SUITE_RUN,)),
    "profl compare runs/ablation runs/ablation-after": Run(
        "profl-noshrink", needs=(SUITE_RUN,), setup=copy_run("runs/ablation",
                                                              "runs/ablation-after")),
    "profl devices --devices my-devices": Run("lab-phone"),
    # docs/gate.md
    GATE + " --update": Run("updated ci/memory.json for torch"),
    GATE: Run("checked 142 numbers of 6 cases", needs=(GATE + " --update",)),
    GATE + " --format github": Run("within tolerance, 0 failing", needs=(GATE + " --update",)),
    GATE + " --format junit --output gate.xml": Run("wrote gate.xml: checked 142 numbers",
                                                   needs=(GATE + " --update",)),
    GATE + " --format json --output gate.json": Run("wrote gate.json: checked 142 numbers",
                                                   needs=(GATE + " --update",)),
    "PYTHONPATH=. pytest --strict-markers tests/test_memory.py": Run("2 passed",
                                                                     background=True),
    # docs/planner.md
    "profl train --method profl --model cnn --width 0.25 --partition-plan plan.json --rounds 150 "
    "--out runs/planned": Run("final accuracy", extra=TINY_TRAIN, needs=(PLAN,)),
    # docs/flower.md: flwr pins its own Ray, so these run in the flower env (tox -e flower)
    "pip install 'profl-bench[flower]'": NotRun(
        "installs flwr, which pins ray 2.55.1: tox -e flower installs it in an env of its own",
        flower_extra),
    "FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run "
    "examples/flower --stream --federation-config num-supernodes=4": NotRun(
        "needs flwr: tests/flower/test_example_app.py runs it in tox -e flower",
        covered_by("tests/flower/test_example_app.py", '"flwr", "run", "examples/flower"')),
    "FLWR_TELEMETRY_ENABLED=0 python examples/flower/run_simulation.py": NotRun(
        "needs flwr: tests/flower/test_example_app.py runs it in tox -e flower",
        covered_by("tests/flower/test_example_app.py", '"examples/flower/run_simulation.py"')),
    "flower-supernode --insecure --superlink 127.0.0.1:9092 --node-config "
    "'partition-id=0 profl-budget-bytes=1500000'": NotRun(
        "needs a Flower deployment (a SuperLink); the key is profl_flower's BUDGET_KEY",
        covered_by("profl_flower/client.py", 'BUDGET_KEY = "profl-budget-bytes"')),
    # docs/results.md
    "profl speed": NotRun("pytest-benchmark timings: minutes; bench/test_speed.py is its suite",
                          covered_by("bench/test_speed.py", "def test_")),
}


def _late(command: str) -> bool:
    """Whether a command runs in the background or needs one that does (tested last, so the
    background commands overlap the others)."""
    how = COMMANDS[command]
    return isinstance(how, Run) and (how.background or any(map(_late, how.needs)))


RUN = sorted((command for command, how in COMMANDS.items() if isinstance(how, Run)), key=_late)
NOT_RUN = [command for command, how in COMMANDS.items() if isinstance(how, NotRun)]


# ----------------------------------------------------------------------------- the runner


@dataclass
class Outcome:
    """A finished command: its exit code and its stdout and stderr together."""

    code: int
    output: str


@dataclass
class Workspace:
    """The temporary folder the documented commands run in, and what ran there."""

    root: Path
    done: dict[str, Outcome] = field(default_factory=dict)
    started: dict[str, tuple[subprocess.Popen[str], Path]] = field(default_factory=dict)

    def run(self, command: str) -> Outcome:
        """The outcome of a documented command (run once, after what it needs)."""
        if command in self.done:
            return self.done[command]
        how = COMMANDS[command]
        assert isinstance(how, Run)
        for needed in how.needs:
            assert self.run(needed).code == 0, f"{needed!r} (needed by {command!r}) failed"
        if how.setup is not None:
            how.setup(self.root)
        if command in self.started:
            outcome = self._wait(command)
        else:
            env, argv = split_env(shlex.split(command))
            argv += how.extra
            outcome = (self.in_process(env, argv[1:]) if argv[0] == "profl"
                       else self._subprocess(env, argv).wait_outcome())
        self.done[command] = outcome
        return outcome

    def start(self, command: str) -> None:
        """Start a background command as a subprocess (its output goes to a file)."""
        how = COMMANDS[command]
        assert isinstance(how, Run)
        assert not how.needs
        env, argv = split_env(shlex.split(command))
        log = self.root / f".background-{len(self.started)}.log"
        self.started[command] = (self._popen(env, [*argv, *how.extra], log), log)

    def stop(self) -> None:
        """End the background commands still running (a test was deselected or failed)."""
        for process, _ in self.started.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    def _wait(self, command: str) -> Outcome:
        process, log = self.started[command]
        try:
            code = process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return Outcome(code, log.read_text(encoding="utf-8"))

    def in_process(self, env: dict[str, str], argv: list[str]) -> Outcome:
        out = io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(self.root)
            for name, value in env.items():
                assert name == "PYTHONPATH", f"unexpected variable {name} in a command"
                for folder in reversed(value.split(os.pathsep)):
                    patch.syspath_prepend(str(self.root / folder))
            before = set(sys.modules)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                    code = main(argv)
            except SystemExit as exit_:  # argparse's own errors
                code = int(exit_.code or 0)
            finally:
                for name in set(sys.modules) - before:  # the user's model module, if imported
                    if getattr(sys.modules[name], "__file__", "") and \
                            str(self.root) in str(sys.modules[name].__file__):
                        del sys.modules[name]
        return Outcome(code, out.getvalue())

    def _popen(self, env: dict[str, str], argv: list[str], log: Path) -> subprocess.Popen[str]:
        full = dict(os.environ)
        for name, value in env.items():  # keep what the environment had after the command's
            full[name] = os.pathsep.join(filter(None, (value, os.environ.get(name))))
        program = executable(argv[0])
        with log.open("w", encoding="utf-8") as sink:
            return subprocess.Popen([*program, *argv[1:]], cwd=self.root, env=full, text=True,
                                    stdout=sink, stderr=subprocess.STDOUT)

    def _subprocess(self, env: dict[str, str], argv: list[str]) -> _Finished:
        log = self.root / f".run-{len(self.done)}.log"
        return _Finished(self._popen(env, argv, log), log)


@dataclass
class _Finished:
    process: subprocess.Popen[str]
    log: Path

    def wait_outcome(self) -> Outcome:
        code = self.process.wait(timeout=TIMEOUT_S)
        return Outcome(code, self.log.read_text(encoding="utf-8"))


def split_env(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """``VAR=value`` assignments in front of a command, and the command."""
    env: dict[str, str] = {}
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    return env, tokens


def executable(name: str) -> list[str]:
    """This environment's script ``name`` (``profl``, ``pytest``), beside the interpreter."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = {"profl": "bench", "pytest": "pytest"}[name]
    return [sys.executable, "-m", module]


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Workspace]:
    """The files the pages define (the suite made tiny), a user's devices folder, and the
    background commands of the selected tests already started."""
    root = tmp_path_factory.mktemp("docs-workspace")
    for name, text in documented_files().items():
        if name == "my-suite.toml":
            text = tiny_suite(text)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    devices = root / "my-devices"
    (devices / "profiles").mkdir(parents=True)
    (devices / "fleets").mkdir()
    # a devices folder of a user (profl devices --devices my-devices): the tests' own
    (devices / "profiles" / "lab-phone.toml").write_text(PROFILE, encoding="utf-8")
    (devices / "fleets" / "mine.toml").write_text(FLEET, encoding="utf-8")
    space = Workspace(root)
    selected = {item.callspec.params.get("command") for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    for command in RUN:
        how = COMMANDS[command]
        if isinstance(how, Run) and how.background and command in selected:
            space.start(command)
    try:
        yield space
    finally:
        space.stop()


# ---------------------------------------------------------------------------------- tests


def test_every_documented_command_is_in_the_table() -> None:
    documented = documented_commands()
    unknown = {c: w for c, w in documented.items() if c not in COMMANDS}
    assert not unknown, "commands shown in the docs but not in COMMANDS (add each with how it " \
        "runs on tiny inputs, or why it cannot): " + "; ".join(
            f"{c!r} ({', '.join(w)})" for c, w in unknown.items())
    stale = sorted(set(COMMANDS) - set(documented))
    assert not stale, f"COMMANDS entries no page shows any more (remove them): {stale}"


def test_the_pages_define_the_files_the_commands_use() -> None:
    assert {"mynet.py", "ci/memory.toml", "my-suite.toml",
            "tests/test_memory.py"} <= set(documented_files())


def short(command: str) -> str:
    """A test id: the command, cut to 60 characters."""
    return command if len(command) <= 60 else command[:57] + "..."


@pytest.mark.parametrize("command", RUN, ids=short)
def test_documented_command(workspace: Workspace, command: str) -> None:
    how = COMMANDS[command]
    assert isinstance(how, Run)
    outcome = workspace.run(command)
    assert outcome.code == how.code, (
        f"{command!r} exited {outcome.code}, expected {how.code}:\n{outcome.output[-3000:]}")
    assert how.fact in outcome.output, (
        f"{command!r} no longer prints {how.fact!r}:\n{outcome.output[-3000:]}")


@pytest.mark.parametrize("command", NOT_RUN, ids=short)
def test_command_not_run_has_a_checked_reason(command: str) -> None:
    how = COMMANDS[command]
    assert isinstance(how, NotRun)
    assert how.reason
    how.check(REPO)
    _, argv = split_env(shlex.split(command))
    if argv[0] == "profl":  # the documented arguments still parse
        build_parser().parse_args(argv[1:])


def test_gate_page_what_a_change_does(workspace: Workspace) -> None:
    """docs/gate.md: a changed ``blocks`` list renames the cases (missing + new: exit 1); a
    changed ``batch_size`` keeps them and makes them not comparable (exit 0)."""
    assert workspace.run(GATE + " --update").code == 0
    suite = (workspace.root / "ci" / "memory.toml").read_text(encoding="utf-8")
    regrouped = suite.replace('blocks = ["stem", "layer1", "layer2-layer3", "head"]',
                              'blocks = ["stem-layer1", "layer2", "layer3", "head"]')
    rebatched = suite.replace("batch_size = 32", "batch_size = 16")
    assert regrouped != suite
    assert rebatched != suite
    for name, text, code, facts in (
        ("regrouped", regrouped, 1, ("FAIL: 6 baseline cases missing",
                                     "mynet:build@b3-8a07df24/grow:2  not in the baseline")),
        ("rebatched", rebatched, 0, ("WARNING: 6 cases not comparable",
                                     "the baseline's batch_size is 32, the suite's 16")),
    ):
        (workspace.root / "ci" / f"{name}.toml").write_text(text, encoding="utf-8")
        outcome = workspace.in_process(
            {"PYTHONPATH": "."},
            ["check", "--suite", f"ci/{name}.toml", "--baseline", "ci/memory.json"])
        assert outcome.code == code, outcome.output
        for fact in facts:
            assert fact in outcome.output, f"{name}: {fact!r} not in\n{outcome.output}"


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces as ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_the_pages_resolve() -> None:
    """Every relative link of the pages names a file or folder that exists, and a ``#part``
    a heading of that page."""
    broken: list[str] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, part = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif part and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"),
                                      flags=re.MULTILINE)
                if part not in {anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "broken links: " + "; ".join(broken)
