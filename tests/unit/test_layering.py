"""The layering rule no import-linter contract covers: no project import hidden in a function.

The contracts themselves (no cycles, the library never imports the harness, only the CLI imports
``bench.commands``) are ``[tool.importlinter]`` in pyproject.toml, checked by ``lint-imports``
in ``make test``. An import inside a function is how a cycle hides from a reader, so project
modules are imported at module level; the one exception is an optional dependency's module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("profl_core", "bench")
#: (importing file, imported module): imported only when asked for, because it needs an
#: optional dependency (``ray``), or, for the pytest plugin every pytest run in the venv loads,
#: because it costs seconds of start-up (torch, the zoo) that only tests using it should pay
#: (its ``profl_core.memory`` import is for type checkers only).
OPTIONAL = {("profl_core/fl/loop.py", "profl_core.fl.ray_backend"),
            ("bench/pytest_plugin.py", "bench.memory_limit"),
            ("bench/pytest_plugin.py", "profl_core.memory")}


def nested_project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a project module below module level in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.col_offset > 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import) and node.col_offset > 0:
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return found


def test_the_scan_finds_a_nested_project_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from bench.paths import CHECKOUT\n    import numpy\n")
    assert nested_project_imports(source) == [(2, "bench.paths")]


def test_no_project_import_inside_a_function() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            offenders += [f"{rel}:{line} imports {name}"
                          for line, name in nested_project_imports(path)
                          if (rel, name) not in OPTIONAL]
    assert offenders == []
