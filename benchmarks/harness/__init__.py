"""The benchmark harness: attack defended models as a TOML config says, cache every cell, report.

    python -m benchmarks list
    python -m benchmarks run quick_demo --quick --data-dir ../shared/data
    python -m benchmarks run gcln_table --set defense.stages.0.params.q=5 --out benchmarks/results/gcln_q_sweep/q5

From Python::

    >>> from benchmarks.harness import load_config
    >>> cfg = load_config("quick_demo")
    >>> [a.name for a in cfg.attacks]
    ['fgsm', 'pgd']

Modules: :mod:`~benchmarks.harness.config` (parsing, checks, ``ConfigError``),
:mod:`~benchmarks.harness.inputs` (``[data]``, ``[model]``, attack names and budgets: built in or
your own), :mod:`~benchmarks.harness.loading` (loading them, checked against each other),
:mod:`~benchmarks.harness.onnx_model` (an ONNX classifier, without gradients),
:mod:`~benchmarks.harness.overrides` (``--set`` and ``[quick]``), :mod:`~benchmarks.harness.cells`
(cells, cache keys), :mod:`~benchmarks.harness.threats` (threat models),
:mod:`~benchmarks.harness.metrics` (``[metrics]``: robustness, training set distance, loss sensitivity),
:mod:`~benchmarks.harness.stats` (a cell's sums and row),
:mod:`~benchmarks.harness.runner` (the batched loop), and :mod:`~benchmarks.harness.report` (csv,
markdown, plots). Which attacks exist, what each takes and how it is called comes from
:mod:`purify.attacks.registry`; a config may ``extends`` another (:mod:`~benchmarks.harness.overrides`).
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from .config import THREAT_MODELS, ConfigError, RunConfig, load_config
from .overrides import BUNDLED_DIR
from .report import plot_accuracy, plot_examples, plotting_unavailable, write_csv, write_report
from .runner import RESULTS_DIR, RunResult, default_results_dir, prepare, run_config
from .threats import ste_stages
from purify.tv import set_threads

__all__ = ["THREAT_MODELS", "ConfigError", "RunConfig", "RunResult", "load_config", "run",
           "bundled_configs", "CONFIG_DIR", "RESULTS_DIR", "default_results_dir"]

log = logging.getLogger(__name__)

CONFIG_DIR = BUNDLED_DIR


def bundled_configs() -> list[tuple[str, str]]:
    """``(name, description)`` of every config in ``benchmarks/configs``, sorted by name."""
    return [(p.stem, load_config(p).description) for p in sorted(CONFIG_DIR.glob("*.toml"))]


def run(config: str | Path, *, quick: bool = False, data_dir: str | Path | None = None,
        out: str | Path | None = None, device: str | None = None, progress: bool = True,
        command: str | None = None, threads: int | None = None, overrides: Sequence[str] = (),
        cache_dir: str | Path | None = None, ray: str | None = None, ray_workers: int = 2) -> RunResult:
    """Run one config; outputs go to ``out``, ``-quick`` appended for ``quick``.

    ``out`` defaults to ``benchmarks/results/<name>`` under the working directory
    (:func:`~benchmarks.harness.runner.default_results_dir`), never inside the installed package.

    Finished cells are cached in ``<cache_dir>/<config name>/`` (default: ``cells/`` in purify's cache
    folder, ``~/.cache/purify`` or ``$PURIFY_CACHE_DIR``), not in ``out``: a killed run resumes, and
    ``out`` receives only ``cells.csv``, ``report.md``, the plots and, with ``[metrics]``, ``metrics.json``.

    ``overrides`` are ``--set`` options (``["defense.stages.0.params.q=5"]``), applied to the
    config's document before it is checked; see :mod:`benchmarks.harness.overrides`.

    ``ray``: run the missing cells on Ray (``"local"``, ``"auto"`` or ``"ray://host:port"``) with
    ``ray_workers`` worker actors of ``threads`` CPUs each; same cache, same rows
    (:mod:`benchmarks.harness.distributed`).

    Every check (config, data directory, files, shapes, device) runs before the first attack.
    ``threads`` sets torch's and the TV kernel's thread count (:func:`purify.tv.set_threads`) for
    the rest of the process; on a CPU shared with other busy processes, 1 thread can be many times
    faster than 2.

    Without matplotlib the run still computes every cell and writes ``cells.csv`` and ``report.md``;
    the report and a logged warning (at the start, before any attack) say why there are no plots.

    Raises:
        ConfigError: the config or what it needs from the machine is wrong; the message names the
            file and the key.
    """
    t0 = time.perf_counter()
    cfg = load_config(config, quick=quick, overrides=overrides)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"{cfg.path}: --threads: expected an integer >= 1, got {threads!r}")
        set_threads(threads)
    prepared = prepare(cfg, data_dir=data_dir, device=device)
    no_plots = plotting_unavailable()
    if no_plots:
        log.warning("%s: %s; the run goes on and writes cells.csv and report.md without plots", cfg.name, no_plots)
    out_dir = Path(out) if out is not None else default_results_dir() / cfg.name
    if quick:
        out_dir = out_dir.with_name(out_dir.name + "-quick")
    out_dir.mkdir(parents=True, exist_ok=True)
    ray_args = None
    if ray is not None:   # workers get the resolved data directory: it must exist at that path on every node
        from purify.data import resolve_data_dir
        ray_args = {"address": ray, "workers": ray_workers, "threads": threads or 1,
                    "data_dir": str(resolve_data_dir(data_dir)), "device": device}
    result = run_config(prepared, out_dir, progress=progress, cache_dir=cache_dir, ray=ray_args)
    files = ["cells.csv", "report.md"]
    write_csv(result.rows, out_dir / "cells.csv")
    if result.metrics:       # [metrics]: the model-level numbers (harness.metrics), beside the cells
        (out_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=1, sort_keys=True) + "\n")
        files.append("metrics.json")
    if no_plots is None:
        try:
            plot_accuracy(result.rows, result.clean, out_dir / "accuracy_vs_eps.png")
            files.append("accuracy_vs_eps.png")
            if result.examples is not None and result.examples.is_file():
                from .runner import example_cell
                plot_examples(result.examples, f"{cfg.name}: {example_cell(prepared).label}", out_dir / "examples.png")
                files.append("examples.png")
        except ImportError as err:      # matplotlib imported, but a part of it (pyplot, a backend) did not
            no_plots = f"matplotlib failed to draw the plots ({err})"
            log.warning("%s: %s; the report is written without plots", cfg.name, no_plots)
    result.files, result.plots_missing = files, no_plots
    if not command:
        opts = (["--quick"] if quick else []) + [f"--set {shlex.quote(o)}" for o in overrides]
        command = " ".join(["python -m benchmarks run", shlex.quote(str(config)), *opts])
    result.wall_s = time.perf_counter() - t0
    write_report(out_dir / "report.md", cfg=cfg, prepared=prepared, result=result, command=command,
                 total_wall_s=result.wall_s, ste=ste_stages(cfg.stages) if any(c.threat_model in ("full", "eot") for c in prepared.cells) else [],
                 files=files, plots_missing=no_plots)
    return result
