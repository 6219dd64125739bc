"""The ``profl`` pytest plugin: a memory limit per test (``pytest11`` entry point ``profl``).

Installing the package registers it; ``pytest -p no:profl`` turns it off.

* Marker: ``@pytest.mark.peak_memory(model="pkg.mod:build", case="grow:2", batch_size=32,
  max_mib=120)`` measures that training case after the test body passed and fails the test
  when the case's ``MemoryReport.required_bytes`` (the number client selection uses: the heap
  peak with kernel scratch when the probe knows it, as the default ``predict`` does; else the
  tensor peak) exceeds ``max_mib`` MiB; the failure prints the per-block table.
* Fixture: ``profl_memory(model=..., case=..., batch_size=..., probe=...)`` returns the
  :class:`~profl_core.memory.MemoryReport` of that case, for tests that assert on it.

Both take ``case`` (default ``full``), ``batch_size`` (64), ``probe`` (``predict``),
``threads`` (1), the model spec a suite's ``[memory.model_spec."NAME"]`` table takes
(``blocks``, ``in_channels``, ``input_size``, ``num_classes``, ``width``,
``identity_standins``; checked the same way, one line naming the field) and ``TrainingCase``
options as keywords (:func:`bench.memory_limit.measure_case`). Given a suite's spec, the marker
measures the suite's case: its key (``mynet:build@b3-e6c58c1d/grow:2/bs32``) is the gate's
(``mynet:build@b3-e6c58c1d/grow:2``) with the batch size, and the failure names it, the probe,
the measured MiB and the limit. A model whose forward takes more than one input is refused in
one line, as ``profl trace`` and ``profl check`` refuse it.

The plugin is harness code (``bench``), not library code (``profl_core``): it reports to a test
runner, and pytest is a test-time dependency, not one of the library's. This module imports
only pytest and the error type; the measuring (:mod:`bench.memory_limit`: torch, the model
zoo, torchvision) is imported when a marked test or the fixture first runs, not at pytest's
start-up, so test runs that never use it (the project's own light test files, a user's
non-torch tests) start as fast as without the plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

from profl_core.errors import ConfigError

if TYPE_CHECKING:
    from profl_core.memory import MemoryReport

MARKER = "peak_memory"
MARKER_HELP = (f"{MARKER}(model, max_mib, case='full', batch_size=64, probe='predict', "
               "threads=1, blocks=(), **spec_and_case_options): fail when the case's "
               "required_bytes exceed max_mib MiB; spec fields as in a suite's "
               "[memory.model_spec] table (profl)")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line("markers", MARKER_HELP)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    """After a ``peak_memory`` test's body passed, measure its case against the limit."""
    result = yield
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return result
    # Deferred import (start-up time, not a cycle): only marked tests load torch and the zoo.
    from bench.memory_limit import measure_limited, over_limit

    try:
        report, limit = measure_limited(marker.args, marker.kwargs)
    except ConfigError as err:
        message: str | None = f"{err}"
    else:
        item.user_properties.append(("peak_memory_required_bytes", report.required_bytes))
        message = over_limit(report, limit)
    if message is not None:
        pytest.fail(f"{MARKER}: {message}", pytrace=False)
    return result


@pytest.fixture
def profl_memory() -> Callable[..., MemoryReport]:
    """``profl_memory(model=..., case=..., batch_size=..., probe=...) -> MemoryReport``."""
    # Deferred import (start-up time, not a cycle): only tests using the fixture load torch.
    from bench.memory_limit import measure_case

    def run(model: str, case: str = "full", batch_size: int = 64, probe: str = "predict",
            threads: int | None = 1, **options: Any) -> MemoryReport:
        try:
            return measure_case(model, case, batch_size, probe, threads, **options)
        except ConfigError as err:
            message = f"profl_memory: {err}"
        pytest.fail(message, pytrace=False)

    return run
