"""Attack convergence from harness results: accuracy against iterations and EOT samples.

Reads the ``cells.csv`` of one or more harness runs and, for every (eps, threat model) with more
than one attack setting, tabulates accuracy against PGD iterations and EOT samples, with a 95 %
Wilson interval, and plots it (one panel per eps, x = gradient evaluations per image, one line
per threat model and EOT sample count). An attack has converged when more iterations and more
samples no longer lower accuracy beyond the interval.

    python -m benchmarks.convergence benchmarks/results/tvm_convergence_cpu benchmarks/results/tvm_adaptive_cpu \\
        --out benchmarks/results/tvm_convergence_cpu
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path

__all__ = ["wilson", "load_rows", "convergence_table", "main"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n, as fractions.

    Example:
        >>> [round(v, 3) for v in wilson(0, 100)]
        [0.0, 0.037]
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def load_rows(folders: list[Path]) -> list[dict]:
    rows = []
    for folder in folders:
        with open(folder / "cells.csv") as f:
            for r in csv.DictReader(f):
                if r["threat_model"] in ("none", "transfer", "substitute", "blackbox") or not r["iters"]:
                    continue
                r["source"] = folder.name
                r["iters"] = int(r["iters"])
                r["eot_samples"] = int(r["eot_samples"]) if r["eot_samples"] else 1
                r["n_images"] = int(r["n_images"])
                r["accuracy"] = float(r["accuracy"])
                r["wall_s"] = float(r["wall_s"])
                rows.append(r)
    return rows


def convergence_table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["source"], r["eps_label"], r["threat_model"])].append(r)
    lines = ["| run | eps | threat model | iterations | EOT samples | gradients / image | accuracy % | 95 % interval | wall s |",
             "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for (source, eps, tm), rs in sorted(groups.items()):
        for r in sorted(rs, key=lambda r: (r["eot_samples"], r["iters"])):
            k = round(r["accuracy"] * r["n_images"])
            lo, hi = wilson(k, r["n_images"])
            lines.append(f"| {source} ({r['n_images']} images) | {eps} | {tm} | {r['iters']} | {r['eot_samples']} | "
                         f"{r['iters'] * r['eot_samples']} | {100 * r['accuracy']:.1f} | {100 * lo:.1f}–{100 * hi:.1f} | "
                         f"{r['wall_s']:.0f} |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps_labels = sorted({r["eps_label"] for r in rows})
    fig, axes = plt.subplots(1, len(eps_labels), figsize=(6 * len(eps_labels), 4.2), squeeze=False)
    for ax, eps in zip(axes[0], eps_labels):
        lines: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            if r["eps_label"] == eps:
                lines[(r["source"], r["threat_model"], r["eot_samples"])].append(r)
        for (source, tm, n), rs in sorted(lines.items()):
            rs = sorted(rs, key=lambda r: r["iters"])
            x = [r["iters"] * r["eot_samples"] for r in rs]
            y = [100 * r["accuracy"] for r in rs]
            label = f"{tm}" + (f", {n} samples" if tm in ("eot", "bpda+eot") else "") + f" [{source}]"
            ax.plot(x, y, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("gradient evaluations per image (iterations × EOT samples)")
        ax.set_ylabel("defended accuracy %")
        ax.set_title(f"eps {eps}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="harness results folders (with cells.csv)")
    p.add_argument("--out", type=Path, default=None, help="where convergence.md / .png go (default: the first folder)")
    args = p.parse_args(argv)
    rows = load_rows(args.folders)
    if not rows:
        print("no adaptive cells with iterations in these folders", file=sys.stderr)
        return 2
    out = args.out or args.folders[0]
    command = "python -m benchmarks.convergence " + " ".join(argv if argv is not None else sys.argv[1:])
    text = ["# Convergence of the adaptive attacks", "", f"- Command: `{command}`",
            "- Rows: every adaptive cell (not `none`, `transfer`, `substitute` or `blackbox`) of the runs; each run's `report.md` has its "
            "machine, date and settings.", "", *convergence_table(rows), "", "![convergence](convergence.png)", ""]
    (out / "convergence.md").write_text("\n".join(text))
    plot(rows, out / "convergence.png")
    print(f"wrote {out / 'convergence.md'} and convergence.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
