"""One logging set-up for the training command lines: the console and the artifact's ``.log``."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

__all__ = ["training_log"]


@contextlib.contextmanager
def training_log(logger: logging.Logger, path: str | Path, *, append: bool = False,
                 timestamps: bool = True) -> Iterator[logging.Logger]:
    """Send ``logger``'s INFO records to stderr and to ``path`` while the block runs.

    Only this logger is configured (no ``logging.basicConfig``), so importing or calling a
    recipe from other code leaves the caller's logging alone; the handlers are removed on exit.
    ``append`` keeps an existing log (a resumed run).

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with training_log(logging.getLogger("demo"), os.path.join(d, "run.log"), timestamps=False) as log:
        ...         log.info("epoch 1")
        ...     open(os.path.join(d, "run.log")).read()
        'epoch 1\\n'
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.StreamHandler(sys.stderr), logging.FileHandler(path, "a" if append else "w")]
    fmt = logging.Formatter("%(asctime)s %(message)s" if timestamps else "%(message)s")
    old_level, old_propagate = logger.level, logger.propagate
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)
        logger.propagate = old_propagate
