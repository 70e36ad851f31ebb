"""The figures of :mod:`benchmarks.brelu_gda`'s page: the paper's Figures 3-5 redrawn from our curves.

``figure3.png`` (white-box FGSM on the MNIST architectures), ``figure4.png`` / ``figure5.png`` (the defenses on
MNIST / CIFAR-10, 2 x 2 panels: FGSM and Rand+FGSM, white-box and black-box). The paper's figures print no values;
an × marks the points its tables repeat. Made from the parsed JSONs alone
(:func:`benchmarks.brelu_gda_page.load_results`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .brelu_gda_page import ARCHS, CURVES, PAPER_TABLE1, _anchors, _part
from .brelu_gda_settings import CIFAR10, MNIST, DatasetSettings

__all__ = ["plot_figures"]


def _plot_curves(ax: Any, results: dict[str, Any], ids: dict[str, str], kind: str, part: str,
                 anchors: dict[str, float], anchor_eps: float | None, title: str, grid: tuple[float, ...]) -> None:
    plotted = False
    for k, (i, label) in enumerate(ids.items()):
        p, wb = _part(results, i, part), _part(results, i, "whitebox")
        color = f"C{k}"
        if i in anchors and anchor_eps is not None:
            ax.plot([anchor_eps], [anchors[i]], "x", ms=8, color=color)
        if p is None or wb is None:
            continue
        plotted = True
        ax.plot([0.0, *grid], [wb["clean"], *(p[kind][f"{e:g}"] for e in grid)], "o-", ms=3, color=color, label=label)
    if not plotted:                 # only the paper's points: show the whole grid's range all the same
        ax.set_xlim(0.0, grid[-1])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("ε")
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)


def _plot_defenses(plt: Any, results: dict[str, Any], ds: DatasetSettings, path: Path) -> None:
    """The defenses' figure of ``ds`` (2 x 2 panels); × = the paper's black-box table values."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    for ax, (kind, part, title) in zip(axes.flat, CURVES):
        _plot_curves(ax, results, ds.defenses, kind, part, *_anchors(ds, kind, part),
                     title.replace("crafted on", "from"), ds.eps_grid)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=8)
    else:                           # nothing trained yet: name the colours of the paper's points
        from matplotlib.lines import Line2D
        axes.flat[0].legend([Line2D([], [], color=f"C{k}", marker="x", ls="") for k in range(len(ds.defenses))],
                            [f"{label} (pending)" for label in ds.defenses.values()], fontsize=8)
    fig.suptitle(f"Figure {ds.figure}: defenses on {ds.label} (× the paper's Table {ds.table.removeprefix('table')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_figures(results: dict[str, Any], folder: Path, cifar: dict[str, Any] | None = None) -> list[Path]:
    """``figure3.png`` (the MNIST architectures), ``figure4.png`` and ``figure5.png`` (the defenses on MNIST and
    CIFAR-10, 2 x 2 panels each); × = the paper's table values."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _plot_curves(ax, results, ARCHS, "fgsm", "whitebox", {a: PAPER_TABLE1[a][k] for k, a in enumerate(ARCHS)}, 0.1,
                 "Figure 3: white-box FGSM, MNIST (× paper, Table 1)", MNIST.eps_grid)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "figure3.png", dpi=110)
    plt.close(fig)
    paths = [folder / "figure3.png"]
    for ds, res in ((MNIST, results), (CIFAR10, cifar or {})):
        paths.append(folder / f"figure{ds.figure}.png")
        _plot_defenses(plt, res, ds, paths[-1])
    return paths
