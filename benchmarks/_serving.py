"""The server package, under the name it has next to this one.

In the repository (and an editable install run from it) the two packages are ``benchmarks`` and
``serving``; a wheel installs them as ``purify_benchmarks`` and ``purify_serving``, so that they do
not claim generic top-level names in a user's environment. Inside each package imports are
relative; the few places where the harness uses the server's code ask this module, which picks
the sibling that matches this package's own name (never both: one copy of the server's modules).

Example:
    >>> module("config").__name__ in ("serving.config", "purify_serving.config")
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["PACKAGE", "module"]

#: The server package's import name beside this package.
PACKAGE = "purify_serving" if __name__.startswith("purify_benchmarks.") else "serving"


def module(name: str) -> ModuleType:
    """``serving.<name>`` (``purify_serving.<name>`` in a wheel), imported."""
    return importlib.import_module(f"{PACKAGE}.{name}")
