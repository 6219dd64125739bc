"""The pytest-benchmark speed suite (``profl speed``, a suite's ``[speed]`` section) and the
target ratios it measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

from bench.paths import CHECKOUT, SPEED_TESTS
from profl_core.errors import ConfigError
from profl_core.results import atomic_write_text

# (name, numerator test, denominator test or None for seconds, target, direction)
TARGETS = [
    ("dispatch probe overhead (resnet18, bs 64)", "test_dispatch_traced_step_resnet18",
     "test_untraced_step_resnet18", 1.10, "<="),
    ("predict whole memory table (s)", "test_predict_whole_memory_table", None, 60.0, "<="),
    *[(f"ProFL grow:{t} round / FedAvg round", f"test_profl_round[{t}]", "test_fedavg_round",
       0.8, "<=") for t in range(1, 5)],
    ("ProFL mean growing round / FedAvg round", "profl_mean", "test_fedavg_round", 0.8, "<="),
    ("feature cache speed-up (grow:3, 5 epochs)", "test_feature_cache_grow3_5_epochs[uncached]",
     "test_feature_cache_grow3_5_epochs[cached]", 1.5, ">="),
    # client-trainings/s of the engine over the bare loop's = bare time / engine time
    ("engine client-trainings/s vs a bare PyTorch loop", "test_client_training_bare_pytorch",
     "test_client_training_engine", 0.9, ">="),
    ("engine client-trainings per second (250-sample client)", "engine_rate", None, 0.0,
     ">="),
    # bench/test_speed_plan.py: profl plan's whole search, one core (issue 29)
    ("profl plan resnet34, batch 64 (s)", "test_plan[resnet34]", None, 60.0, "<="),
    ("profl plan mobilenet_v3_small, batch 32 (s)", "test_plan[torchvision:mobilenet_v3_small]",
     None, 30.0, "<="),
    # the same plans again, every step from the report cache the first filled
    ("profl plan resnet34 again, from the report cache (s)", "test_plan_cached[resnet34]", None,
     60.0, "<="),
    ("profl plan mobilenet_v3_small again, from the report cache (s)",
     "test_plan_cached[torchvision:mobilenet_v3_small]", None, 30.0, "<="),
]


def ratios(benchmark_json: dict) -> list[list[str]]:
    """Rows of (target, measured, goal, met) from a pytest-benchmark JSON dump."""
    means = {b["name"]: b["stats"]["mean"] for b in benchmark_json["benchmarks"]}
    grow = [v for k, v in means.items() if k.startswith("test_profl_round[")]
    if grow:
        means["profl_mean"] = sum(grow) / len(grow)
    if "test_client_training_engine" in means:
        means["engine_rate"] = 1 / means["test_client_training_engine"]
    rows = []
    for label, num, den, goal, op in TARGETS:
        if num not in means or (den is not None and den not in means):
            continue
        value = means[num] / means[den] if den else means[num]
        met = value <= goal if op == "<=" else value >= goal
        rows.append([label, f"{value:.3f}", f"{op} {goal}", "yes" if met else "NO"])
    for bench in benchmark_json["benchmarks"]:  # ratios without a target, e.g. alternatives
        den = bench.get("extra_info", {}).get("ratio_to")
        if den in means:
            label = bench["extra_info"].get("label", f"{bench['name']} / {den}")
            rows.append([label, f"{means[bench['name']] / means[den]:.3f}", "-", "-"])
    return rows


def run_speed(folder: Path, select: str | None = None) -> str:
    """Run the speed tests with ``benchmark.json`` and ``speed.md`` in ``folder``; the table."""
    folder.mkdir(parents=True, exist_ok=True)
    dump = folder / "benchmark.json"
    cmd = [sys.executable, "-m", "pytest", *map(str, SPEED_TESTS), "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={dump}", "--benchmark-columns=mean,stddev,rounds"]
    if select:
        cmd += ["-k", select]
    code = subprocess.run(cmd, cwd=CHECKOUT, check=False).returncode  # None: here
    if code != 0 or not dump.exists():
        raise ConfigError(f"speed benchmarks failed (pytest exit {code}); see the output above")
    table = tabulate(ratios(json.loads(dump.read_text())),
                     headers=["target", "measured", "goal", "met"], tablefmt="github")
    atomic_write_text(folder / "speed.md", "# Speed targets\n\n" + table + "\n")
    return table
