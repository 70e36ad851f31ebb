"""Command line of the benchmark harness.

    python -m benchmarks list
    python -m benchmarks leaderboard [--rows ID,ID] [--report-only] [--data-dir DIR]   (see benchmarks.leaderboard)
    python -m benchmarks run <config-name-or-path> [--quick] [--set KEY=VALUE ...] [--data-dir DIR] [--out DIR]
                             [--device D] [--threads N] [--cache-dir DIR]

``list`` shows the bundled configs of ``benchmarks/configs``; ``run`` runs one and writes
``cells.csv``, ``report.md``, ``accuracy_vs_eps.png`` and ``examples.png`` (the plots need matplotlib;
without it the report says so) to ``benchmarks/results/<name>/`` under the working directory, or
``--out`` (``<out>-quick`` with ``--quick``). Finished cells are cached under
``<cache-dir>/<config name>/`` (default ``~/.cache/purify/cells/<config name>/``; ``$PURIFY_CACHE_DIR``
moves it), keyed by everything their numbers depend on, so an interrupted run picks up where it stopped.

``--set KEY=VALUE`` (repeatable) changes the config before it is checked: KEY is a dotted path into
the TOML document (integers index arrays), VALUE a TOML value or else a plain string. A
quantization sweep, one output folder per value::

    python -m benchmarks run gcln_table --set defense.stages.0.params.q=5 --out benchmarks/results/gcln_q_sweep/q5
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .harness import ConfigError, bundled_configs, run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["leaderboard"]:
        from .leaderboard import main as leaderboard
        return leaderboard(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="show the bundled configs")
    sub.add_parser("leaderboard", help="rank every shipped defense by its worst case (--help for its options)")
    r = sub.add_parser("run", help="run one config")
    r.add_argument("config", help="a bundled config name (see `list`) or a path to a .toml file")
    r.add_argument("--quick", action="store_true", help="apply the config's [quick] overrides; writes to <out>-quick")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value before it is checked, e.g. --set data.count=200 or "
                        "--set defense.stages.0.params.q=5 (repeatable; VALUE is TOML, else a string)")
    r.add_argument("--data-dir", default=None, help="folder with the datasets and weights/ (default: $PURIFY_DATA_DIR)")
    r.add_argument("--out", default=None,
                   help="results folder (default: benchmarks/results/<config name> under the working directory)")
    r.add_argument("--device", default=None, help="'auto', 'cpu' or 'cuda[:N]' (default: the config's)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) (default: torch's choice; on a CPU shared with busy processes 1 "
                        "can be much faster)")
    r.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cell cache; cells go to DIR/<config name>/ (default: ~/.cache/purify/cells, or cells/ "
                        "under $PURIFY_CACHE_DIR); finished cells are reused, so a killed run resumes")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the cells on Ray: 'local' (a Ray started here, loopback only), 'auto' (the cluster "
                        "`ray start` made) or 'ray://HOST:10001'; same cache and results as a local run "
                        "(see benchmarks.harness.distributed)")
    r.add_argument("--ray-workers", type=int, default=2, help="worker actors for --ray (each takes --threads CPUs)")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            configs = bundled_configs()
            width = max(len(n) for n, _ in configs)
            for name, desc in configs:
                print(f"{name:{width}s}  {desc}")
            return 0
        command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv)
        result = run(args.config, quick=args.quick, data_dir=args.data_dir, out=args.out, device=args.device,
                     progress=not args.no_progress, command=command, threads=args.threads,
                     overrides=args.overrides, cache_dir=args.cache_dir, ray=args.ray, ray_workers=args.ray_workers)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(result.computed)} cells computed, {len(result.cached)} cached; {result.wall_s:.1f} s; "
          f"wrote {result.out_dir}/ ({', '.join(result.files)})"
          + (f"; no plots: {result.plots_missing}" if result.plots_missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
