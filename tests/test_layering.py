"""The library's layering: ``serving`` and ``benchmarks`` import ``purify``; ``purify`` imports neither."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import purify

PACKAGE = Path(purify.__file__).resolve().parent
FORBIDDEN = ("serving", "benchmarks")


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_module_of_purify_imports_serving_or_benchmarks():
    """Statically, including imports inside functions (lazy imports are imports too)."""
    offenders = {str(p.relative_to(PACKAGE)): sorted(_imported_roots(p) & set(FORBIDDEN))
                 for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) > 20   # the walk saw the package


def test_importing_every_purify_module_loads_neither():
    code = ("import importlib, pkgutil, sys, purify\n"
            "for m in pkgutil.walk_packages(purify.__path__, 'purify.'):\n"
            "    if m.name.endswith('__main__'):\n"
            "        continue\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('serving', 'benchmarks')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
