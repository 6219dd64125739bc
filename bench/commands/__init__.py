"""One module per ``profl`` sub-command.

Each module defines ``NAME`` (the sub-command), ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit code). :data:`COMMANDS` lists them in help order.
"""

from bench.commands import (
    bench,
    check,
    compare,
    data,
    devices,
    em_study,
    gpu_check,
    memory,
    models,
    plan,
    report,
    speed,
    trace,
    train,
)

COMMANDS = [bench, report, compare, memory, trace, plan, check, devices, models, data, train,
            speed, gpu_check, em_study]
