"""Quantization sweep of the cleaning network: one harness run per q, then a table and a plot.

Runs ``benchmarks/configs/gcln_q_sweep.toml`` once per ``--q`` with the override
``defense.stages.0.params.q=<q>`` (the quantization step of the layer inside G; the generator's
weights stay those of the config) into ``<out>/q<q>/``, and writes ``<out>/sweep.md`` and
``<out>/sweep.png``: clean accuracy and accuracy under each threat model of the config, with 95 %
Wilson intervals. Cells are cached (in ``~/.cache/purify/cells/<config>/``, or ``--cache-dir``), so an
interrupted sweep resumes.

    python -m benchmarks.gcln_q_sweep --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

from .convergence import wilson
from .harness import RESULTS_DIR, run
from .harness.report import machine

DEFAULT_QS = (2, 5, 8, 10, 12, 16, 20)
#: papers/gcln-generative-cleaning.txt, Table 2: BPDA at 0.031 L-inf, each q with its own trained generator.
PAPER_BPDA = {5: 51.0, 10: 53.0}


def _fmt(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} ({100 * lo:.0f}–{100 * hi:.0f})"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gcln_q_sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="gcln_q_sweep", help="harness config (bundled name or path)")
    ap.add_argument("--q", type=float, nargs="+", default=list(DEFAULT_QS), help="quantization steps (0..255 scale)")
    ap.add_argument("--data-dir", default=None, help="folder with the datasets and weights/ (default: $PURIFY_DATA_DIR)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "gcln_q_sweep"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (see `python -m benchmarks run --help`)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="further config overrides, passed to every run (e.g. data.count=100)")
    ap.add_argument("--cache-dir", default=None, metavar="DIR",
                    help="cell cache (see `python -m benchmarks run --help`)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    rows, clean, threat_models, n_images = {}, {}, [], 0
    for q in args.q:
        label = f"{q:g}"
        result = run(args.config, data_dir=args.data_dir, out=out / f"q{label}", threads=args.threads,
                     progress=not args.no_progress, cache_dir=args.cache_dir,
                     overrides=[f"defense.stages.0.params.q={q}", *args.overrides],
                     command=f"python -m benchmarks run {args.config} --set defense.stages.0.params.q={q} "
                             + " ".join(f"--set {shlex.quote(o)}" for o in args.overrides))
        n_images = len(result.clean["defended_correct"])
        clean[label] = sum(result.clean["defended_correct"])
        for r in result.rows:
            tm = r["threat_model"]
            if tm not in threat_models:
                threat_models.append(tm)
            rows[label, tm] = round(r["accuracy"] * r["n_images"])
        print(f"q = {label}: clean {100 * clean[label] / n_images:.1f} %, "
              + ", ".join(f"{tm} {100 * rows[label, tm] / n_images:.1f} %" for tm in threat_models), flush=True)

    qs = [f"{q:g}" for q in args.q]
    lines = ["# GCLN quantization sweep", "",
             f"Config `{args.config}` ({n_images} CIFAR-10 test images), one run per q with "
             "`--set defense.stages.0.params.q=<q>`; each run's report is in `q<q>/report.md`. "
             "Accuracy % with its 95 % Wilson interval.", "",
             "| q | clean | " + " | ".join(threat_models) + " | paper, BPDA (Table 2) |",
             "|---:|---:|" + "---:|" * len(threat_models) + "---:|"]
    for q, label in zip(args.q, qs):
        paper = PAPER_BPDA.get(int(q)) if float(q).is_integer() else None
        lines.append(f"| {label} | {_fmt(clean[label], n_images)} | "
                     + " | ".join(_fmt(rows[label, tm], n_images) for tm in threat_models)
                     + f" | {paper if paper is not None else ''} |")
    lines += ["", "The paper's Table 2 figures are for a generator trained at each q; ours is one generator "
              "(the config's weights) run at every q.", "", "## Run", "", "```",
              "python -m benchmarks.gcln_q_sweep " + " ".join(map(shlex.quote, argv)), "```", "",
              f"- machine: {machine()}",
              f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; wall time "
              f"{time.perf_counter() - t0:.0f} s (cached cells are not recomputed)", ""]
    (out / "sweep.md").write_text("\n".join(lines))
    _plot(out / "sweep.png", args.q, qs, clean, rows, threat_models, n_images)
    print("\n".join(lines))
    return 0


def _plot(path: Path, q_values, qs, clean, rows, threat_models, n) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series = [("clean", [clean[q] for q in qs])] + [(tm, [rows[q, tm] for q in qs]) for tm in threat_models]
    for name, ks in series:
        acc = [100 * k / n for k in ks]
        lo = [100 * (k / n - wilson(k, n)[0]) for k in ks]
        hi = [100 * (wilson(k, n)[1] - k / n) for k in ks]
        ax.errorbar(q_values, acc, yerr=[lo, hi], marker="o", capsize=3, label=name)
    paper = sorted(PAPER_BPDA.items())
    ax.plot([q for q, _ in paper], [a for _, a in paper], "k*", markersize=10, label="paper, BPDA (own G per q)")
    ax.set_xlabel("quantization step q (0..255 scale)")
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
