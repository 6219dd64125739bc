"""The harness around profl_core: the ``profl`` CLI, suites, reports, plots and benchmarks."""
