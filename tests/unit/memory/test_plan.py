"""The partition planner (profl_core/memory/plan.py, bench/planning.py, ``profl plan``)."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from bench.planning import PlanProgress, read_plan
from profl_core.errors import ConfigError
from profl_core.memory import MemoryReport, measure
from profl_core.memory.case import TrainingCase
from profl_core.memory.plan import (
    Unit,
    _best_bounds,
    _search,
    _searched_blocks,
    head_group,
    join,
    layer_units,
    partition_spec,
    plan_partition,
)
from profl_core.models import build_model, native_spec

BATCH = 8
HERE = Path(__file__).resolve().parent
#: A 4-unit user model (plan_toy_model.py) on 16x16 inputs: small enough to search quickly.
TOY = "plan_toy_model:build"


@pytest.fixture(scope="module", autouse=True)
def _toy_importable():
    sys.path.insert(0, str(HERE))
    yield
    sys.path.remove(str(HERE))


def toy_spec():
    return native_spec(TOY, input_size=16)


def _brute_force(cost, count: int, max_blocks: int) -> tuple[int, int, int]:
    """(largest cost, sum of costs, blocks) of the best partition, by trying every cut set."""
    best = None
    for blocks in range(2, max_blocks + 1):
        for cuts in itertools.combinations(range(1, count), blocks - 1):
            edges = [0, *cuts, count]
            costs = [cost(a, b) for a, b in itertools.pairwise(edges)]
            value = (max(costs), sum(costs), blocks)
            best = value if best is None else min(best, value)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(5))
def test_the_search_finds_the_brute_force_optimum(seed: int) -> None:
    rng = torch.Generator().manual_seed(seed)
    table = torch.randint(1, 100, (9, 10), generator=rng).tolist()

    def cost(i: int, j: int) -> int:
        return table[i][j] + 10 * (j - i)  # longer blocks cost more, with noise

    cuts = _best_bounds(cost, 9, 5)
    edges = [0, *cuts, 9]
    costs = [cost(a, b) for a, b in itertools.pairwise(edges)]
    assert (max(costs), sum(costs), len(costs)) == _brute_force(cost, 9, 5)


class _Table:
    """Block steps from tables (the ``_BlockSteps`` interface of ``_search``): the grow and
    shrink peaks of block ``[i, j)`` (a first block has no shrink step); records the steps
    measured."""

    def __init__(self, grow: list[list[int]], shrink: list[list[int]]) -> None:
        self.tables = {"grow": grow, "shrink": shrink}
        self.measured: set[tuple[int, int, str]] = set()

    def _steps(self, key: tuple[int, int, tuple[int, ...]]) -> list[str]:
        return ["grow", "shrink"] if key[0] else ["grow"]

    def peak(self, key: tuple[int, int, tuple[int, ...]], step: str) -> int:
        return self.tables[step][key[0]][key[1]]

    def cost(self, key: tuple[int, int, tuple[int, ...]]) -> int:
        return max(self.peak(key, step) for step in self._steps(key))

    def grow(self, key: tuple[int, int, tuple[int, ...]]) -> int:
        self.measured.add((key[0], key[1], "grow"))
        return self.peak(key, "grow")

    def known(self, key: tuple[int, int, tuple[int, ...]]) -> int | None:
        peaks = [self.peak(key, step) for step in self._steps(key)
                 if (key[0], key[1], step) in self.measured]
        return max(peaks) if peaks else None

    def exact(self, key: tuple[int, int, tuple[int, ...]]) -> bool:
        return all((key[0], key[1], step) in self.measured for step in self._steps(key))

    def next_step(self, key: tuple[int, int, tuple[int, ...]]) -> None:
        step = next(s for s in self._steps(key) if (key[0], key[1], s) not in self.measured)
        self.measured.add((key[0], key[1], step))

    def bound(self, key: tuple[int, int, tuple[int, ...]]) -> int:
        return sum((key[0], key[1], step) not in self.measured for step in self._steps(key))

    def narrow(self, remaining: int) -> None:
        pass


def _tables(seed: int, count: int) -> _Table:
    rng = torch.Generator().manual_seed(seed)
    grow = (torch.randint(1, 100, (count, count + 1), generator=rng)
            + 10 * (torch.arange(count + 1) - torch.arange(count)[:, None]).abs()).tolist()
    shrink = torch.randint(1, 120, (count, count + 1), generator=rng).tolist()
    return _Table(grow, shrink)


def _slack(seed: int, count: int) -> list[list[int]]:
    """What a lower bound misses of each block's grow step: 0 to 40."""
    rng = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, 41, (count, count + 1), generator=rng).tolist()


KEYS = {(i, j): (i, j, ()) for i, j in _searched_blocks(9)}


@pytest.mark.parametrize("seed", range(20))
def test_a_search_from_lower_bounds_gives_the_boundaries_of_every_cost(seed: int) -> None:
    """The oracle: the search over every block's exact cost (the larger of its two steps)."""
    every = _best_bounds(lambda i, j: _tables(seed, 9).cost((i, j, ())), 9, 5)
    table, slack = _tables(seed, 9), _slack(seed, 9)
    lower = lambda key: table.peak(key, "grow") - slack[key[0]][key[1]]  # noqa: E731
    assert _search(table, KEYS, 9, 5, lower) == every


@pytest.mark.parametrize("seed", range(5))
def test_a_search_from_measured_grow_steps_gives_the_boundaries_of_every_cost(
        seed: int) -> None:
    every = _best_bounds(lambda i, j: _tables(seed, 9).cost((i, j, ())), 9, 5)
    table = _tables(seed, 9)
    assert _search(table, KEYS, 9, 5, table.grow) == every


@pytest.mark.parametrize("seed", range(5))
def test_a_search_from_a_bound_of_zero_gives_the_boundaries_of_every_cost(seed: int) -> None:
    every = _best_bounds(lambda i, j: _tables(seed, 9).cost((i, j, ())), 9, 5)
    assert _search(_tables(seed, 9), KEYS, 9, 5, lambda key: 0) == every


def test_a_search_from_lower_bounds_measures_few_steps() -> None:
    table, slack = _tables(0, 9), _slack(0, 9)
    _search(table, KEYS, 9, 5, lambda key: table.peak(key, "grow") - slack[key[0]][key[1]])
    every_step = sum(table.bound(key) for key in KEYS.values()) + len(table.measured)
    assert len(table.measured) < every_step / 2


def test_resnet18_units_are_the_stem_and_its_basic_blocks() -> None:
    units = [u.text for u in layer_units(build_model(native_spec("resnet18")))]
    assert units == ["block1.0-2", "block1.3", "block1.4", "block2.0", "block2.1", "block3.0",
                     "block3.1", "block4.0", "block4.1"]


def test_a_partition_across_stages_composes_to_the_zoo_forward() -> None:
    spec = native_spec("resnet18")
    units = layer_units(build_model(spec))
    cut = partition_spec(spec, units, [2, 5])
    assert cut.blocks == ("block1.0-3", "block1.4+block2.0-1", "block3.0-1+block4.0-1", "head")
    zoo = build_model(spec, generator=torch.Generator().manual_seed(3))
    planned = build_model(cut, generator=torch.Generator().manual_seed(3))
    x = torch.randn(2, 3, 32, 32)
    zoo.eval()
    planned.eval()
    with torch.no_grad():
        expected = zoo(x)
        got = planned(x)
    assert planned.num_blocks == 3
    assert torch.equal(got, expected)


#: What the toy plan's search measured (case -> times) and told its progress callback.
TOY_MEASURED: Counter[TrainingCase] = Counter()
TOY_PROGRESS: list[tuple[int, int, int, int]] = []


@pytest.fixture(scope="module")
def toy_plan(_toy_importable):
    """A plan measured with dispatch (the search takes any probe; dispatch is the cheapest on
    a small batch)."""

    def counted(case: TrainingCase) -> MemoryReport:
        TOY_MEASURED[case] += 1
        return measure(case, probe="dispatch")

    return plan_partition(toy_spec(), batch_size=BATCH, max_blocks=3, measure=counted,
                          progress=lambda *told: TOY_PROGRESS.append(told))


def test_the_search_measures_each_case_once(toy_plan) -> None:
    assert TOY_MEASURED
    assert max(TOY_MEASURED.values()) == 1


def test_each_search_counts_its_block_steps_up_to_its_bound(toy_plan) -> None:
    searches = [told[0] for told in TOY_PROGRESS]
    assert searches == sorted(searches)
    assert searches[0] == 1
    assert 1 <= searches[-1] <= TOY_PROGRESS[0][1] == 4  # 1 + refinements searches at most
    for number in set(searches):
        search = [told for told in TOY_PROGRESS if told[0] == number]
        dones = [done for _, _, done, _ in search]
        totals = [total for _, _, _, total in search]
        assert dones[0] == 0
        assert all(later - earlier in (0, 1) for earlier, later in itertools.pairwise(dones))
        assert all(later <= earlier for earlier, later in itertools.pairwise(totals))
        assert all(done <= total for done, total in zip(dones, totals, strict=True))
    # the first search's bound: every block of the 4 units but [0, 4), the 3 first blocks
    # [0, j) with their grow:1 step, the 6 others with grow:2 and shrink:2
    assert TOY_PROGRESS[0][3] == 3 + 2 * 6


def test_progress_off_a_terminal_is_a_line_every_few_seconds() -> None:
    stream = io.StringIO()
    with PlanProgress("toy", every=3600.0, stream=stream) as progress:
        progress.measured("full")  # within the interval: no line
        progress.search(1, 4, 0, 10)  # a search starts: always a line
        for done in range(1, 6):
            progress.measured("grow:1")
            progress.search(1, 4, done, 10)
    lines = stream.getvalue().splitlines()
    assert lines == ["plan toy: search 1 of at most 4, 0/10 block steps at most, 1 steps "
                     "measured, 0s elapsed"]
    stream = io.StringIO()
    with PlanProgress("toy", every=0.0, stream=stream) as progress:
        progress.search(2, 4, 0, 10)
        progress.measured("grow:2")
        progress.search(2, 4, 5, 10)
    assert "5/10 block steps at most" in stream.getvalue()
    assert "search ETA" in stream.getvalue().splitlines()[-1]
    assert "\r" not in stream.getvalue()


def test_the_plan_never_loses_to_the_stage_partition_on_its_largest_step(toy_plan) -> None:
    stage = [measure(c, probe="dispatch").required_bytes
             for c in _profl_cases(toy_spec())]
    assert toy_plan.peak_bytes <= max(stage)


def _profl_cases(spec):
    return [TrainingCase(model=spec, kind=kind, step=t, batch_size=BATCH)
            for kind, first in (("grow", 1), ("shrink", 2))
            for t in range(first, build_model(spec).num_blocks + 1)]


def test_the_printed_step_peaks_are_what_dispatch_measures() -> None:
    plan = plan_partition(toy_spec(), batch_size=BATCH, max_blocks=2,
                          measure=lambda case: measure(case, probe="predict", threads=1))
    for step in plan.steps:
        kind, _, t = step.case.partition(":")
        case = TrainingCase(model=plan.spec, kind=kind, step=int(t), batch_size=BATCH)
        assert measure(case, probe="dispatch").tensor_peak_bytes == step.tensor_peak_bytes, \
            step.case


def test_the_plan_is_the_toy_models_units_cut_once(toy_plan) -> None:
    assert len(toy_plan.spec.blocks) - 1 >= 2
    assert len(toy_plan.units) == 4


def test_max_blocks_below_two_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_blocks=1; use 2 or more"):
        plan_partition(toy_spec(), batch_size=BATCH, max_blocks=1, measure=measure)


def _profl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True,
                          text=True, check=False,
                          env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(HERE),
                               "XDG_CACHE_HOME": str(cwd / "xdg-cache")})


def test_profl_plan_json_and_the_plan_file(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    run = _profl("plan", "--model", TOY, "--input-size", "16", "--batch-size", str(BATCH),
                 "--probe", "dispatch",
                 "--fleet", "relative-uniform", "--json", "--out", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed == json.loads(out.read_text())
    assert printed["peak_bytes"] == max(s["peak_bytes"] for s in printed["steps"])
    assert printed["full_bytes"] > printed["peak_bytes"]
    assert all(0.0 <= s["fleet_share"] <= 1.0 for s in printed["steps"])
    assert read_plan(out, TOY)[0] == tuple(printed["blocks"])


def test_a_plan_of_another_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"schema": "profl-partition-plan/1", "model": {"name": "vgg11"},
                                "blocks": ["block1", "block2", "head"]}))
    with pytest.raises(ConfigError, match=r"model.name = 'vgg11'; the plan is for 'vgg11' but "
                                          r"the run trains 'cnn'"):
        read_plan(path, "cnn")


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"[1, 2]", b'{"schema": "x"}'])
def test_a_file_that_is_no_plan_is_one_line_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_plan(path, "cnn")
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_train_takes_the_plan_and_refuses_a_bad_one(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text("{")
    run = _profl("train", "--model", "cnn", "--partition-plan", str(bad), "--rounds", "1",
                 "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert str(bad) in run.stderr


def test_an_unknown_objective_is_refused() -> None:
    with pytest.raises(ConfigError, match="objective='heap'; use one of required, tensor"):
        plan_partition(toy_spec(), batch_size=BATCH, measure=measure,
                       objective="heap")  # type: ignore[arg-type]


def test_the_tensor_objective_minimises_the_largest_tensor_peak() -> None:
    def dispatch(case):
        return measure(case, probe="dispatch")

    by_tensor = plan_partition(toy_spec(), batch_size=BATCH, max_blocks=2,
                               measure=dispatch, objective="tensor", refinements=0)
    model = build_model(toy_spec())
    units = layer_units(model)
    every = []
    for cut in range(1, len(units)):  # brute force over every 2-block partition
        spec = partition_spec(toy_spec(), units, [cut], head=head_group(model))
        every.append(max(measure(c, probe="dispatch").tensor_peak_bytes
                         for c in _profl_cases(spec)))
    assert by_tensor.peak_tensor_bytes == min(every)


def test_cases_of_two_partitions_have_distinct_keys() -> None:
    spec = native_spec("resnet18")
    units = layer_units(build_model(spec))
    first = TrainingCase(model=partition_spec(spec, units, [2, 5]), kind="grow", step=2,
                         batch_size=BATCH)
    second = TrainingCase(model=partition_spec(spec, units, [3, 5]), kind="grow", step=2,
                          batch_size=BATCH)
    assert first.key.startswith("resnet18@b3-")
    assert first.key != second.key


def test_joining_leaf_units_keeps_every_one() -> None:
    assert join([Unit("features", "4", ""), Unit("features", "5", "")]) == "features.4-5"
    assert join([Unit("layer1", "1", ""), Unit("layer2", "0", "1")]) == "layer1.1+layer2.0-1"
