"""What :mod:`benchmarks.brelu_gda` runs on each data set: the models, the ε grids and the attack budgets.

One frozen :class:`DatasetSettings` per data set (:data:`MNIST`, :data:`CIFAR10`; by name in
:data:`DATASETS`). The budgets both data sets share (minimal FGSM, DeepFool, JSMA, C&W, APGD and Square)
are module-level dicts. Each part stores the settings its numbers depend on
(:func:`benchmarks.brelu_gda._settings`): a change here makes the stored part stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Entry", "DatasetSettings", "MNIST", "CIFAR10", "DATASETS"]


@dataclass(frozen=True)
class Entry:
    """A model of the page: ``artifact`` from the weights folder, behind ``bits``-bit squeezing when set."""

    id: str
    artifact: str
    bits: int | None = None


#: Rand+FGSM's random step in the curves (both data sets: the paper's Figures 4 and 5 use α = 0.05).
ALPHA = 0.05
MINIMAL = {"eps_step": 0.1, "eps_max": 0.3}
DEEPFOOL = {"max_iter": 100}
JSMA = {"theta": 0.1, "gamma": 1.0}
#: C&W: the authors' code runs 9 x 10,000 Adam steps at lr 0.01; 2 CPU cores afford 3 x 100 at lr 0.05 from c = 1.
CW = {"kappa": 2.3, "c": 1.0, "binary_search_steps": 3, "steps": 100, "lr": 0.05}
WORST = {"iters": 50, "n_target_classes": 3, "queries": 1000}
#: Width of the smooth BPDA staircase for the squeezer, in quantization steps (1-bit: 0.1 of the pixel range;
#: 3-bit: 0.1 / 7).
SMOOTH_TEMPERATURE = 0.1
SEED = 0


@dataclass(frozen=True)
class DatasetSettings:
    """The models and settings of one data set's half of the paper.

    ``archs``: Figure 3 / Table 1's architectures (none on CIFAR-10); ``defenses``: the CNN with each
    defense, in the paper's row order; ``source``: the black-box attacks' source; ``parts``: the parts
    computed for a defense; ``table_eps``: the black-box table's FGSM / Rand+FGSM ε (points of
    ``eps_grid``); ``pgd``: the honest columns' L∞ budget (``eps``) and PGD; ``honest_alpha``:
    Rand+FGSM's random step there; ``subdir``: the results' folder under ``--out``.
    """

    name: str
    label: str
    weights_dir: str
    script: str
    archs: dict[str, str]
    defenses: dict[str, str]
    entries: dict[str, Entry]
    source: str
    parts: tuple[str, ...]
    eps_grid: tuple[float, ...]
    table_eps: dict[str, float]
    pgd: dict[str, float]
    honest_alpha: float
    table: str                  # the black-box table's key in the results, and its number on the page
    figure: int                 # the defenses' figure
    subdir: str = ""
    per255: bool = False        # the page writes the honest columns' budgets in steps of 1/255
    alpha: float = ALPHA
    smooth_temperature: float = SMOOTH_TEMPERATURE

    def results_dir(self, out: str | Path) -> Path:
        return Path(out) / self.subdir


def _entries(ids: dict[str, str], fs: str, artifact: str, bits: int) -> dict[str, Entry]:
    return {i: Entry(i, artifact, bits=bits) if i == fs else Entry(i, i) for i in ids}


_MNIST_ARCHS = {"cnn_mnist": "CNN + ReLU", "cnn_mnist_brelu": "CNN + BReLU", "resnet_mnist": "ResNet + ReLU",
                "resnet_mnist_brelu": "ResNet + BReLU"}
_MNIST_DEFENSES = {"cnn_mnist": "CNN", "cnn_mnist_fs": "Feature squeezing", "cnn_mnist_ls": "Label smoothing",
                   "cnn_mnist_fgsm_at": "FGSM adversarial training", "cnn_mnist_vat": "VAT",
                   "cnn_mnist_gda": "GDA + ReLU", "cnn_mnist_gda_brelu": "GDA + BReLU"}
#: MNIST: Figures 3 and 4, Tables 1-4. Feature squeezing: 1-bit depth reduction (the paper's FS on MNIST).
#: The ε grid is the paper's 0.01 .. 1; Table 4's Rand+FGSM ε is not stated: Tramèr et al.'s 0.3.
MNIST = DatasetSettings(
    name="mnist", label="MNIST", weights_dir="runs/mnist16", script="runs/issue16_mnist.sh",
    archs=_MNIST_ARCHS, defenses=_MNIST_DEFENSES,
    entries=_entries({**_MNIST_ARCHS, **_MNIST_DEFENSES}, "cnn_mnist_fs", "cnn_mnist", 1), source="resnet_mnist",
    parts=("whitebox", "minimal", "sensitivity", "blackbox", "honest"),
    eps_grid=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
    table_eps={"fgsm": 0.1, "rand_fgsm": 0.3}, pgd={"eps": 0.3, "step": 0.01, "iters": 40}, honest_alpha=ALPHA,
    table="table4", figure=4)

_CIFAR_DEFENSES = {"cnn_cifar10": "CNN", "cnn_cifar10_fs": "Feature squeezing", "cnn_cifar10_ls": "Label smoothing",
                   "cnn_cifar10_fgsm_at": "FGSM adversarial training", "cnn_cifar10_vat": "VAT",
                   "cnn_cifar10_gda": "GDA + ReLU", "cnn_cifar10_gda_brelu": "GDA + BReLU"}
#: CIFAR-10: Figure 5 and Table 5. Feature squeezing: 3-bit depth reduction (the paper's FS on CIFAR-10).
#: The curves stop at ε 0.3 (the paper: "for CIFAR10, we only show the results for 0 ≤ ε ≤ 0.3"). Table 5:
#: FGSM ε 0.1 (stated); Rand+FGSM ε 0.1 with α 0.05 (not stated: the paper's Rand+FGSM accuracies are
#: above its FGSM ones, as a random step of 0.05 and a gradient step of 0.05 give). The honest columns
#: at the usual 8/255, PGD 20 steps of 2/255, Rand+FGSM's α = ε / 2 (Tramèr et al.; α ≤ ε is required).
CIFAR10 = DatasetSettings(
    name="cifar10", label="CIFAR-10", weights_dir="runs/cifar16", script="runs/issue16_cifar.sh",
    archs={}, defenses=_CIFAR_DEFENSES,
    entries=_entries({**_CIFAR_DEFENSES, "resnet_cifar10": "ResNet + ReLU"}, "cnn_cifar10_fs", "cnn_cifar10", 3),
    source="resnet_cifar10", parts=("whitebox", "sensitivity", "blackbox", "honest"),
    eps_grid=(0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3),
    table_eps={"fgsm": 0.1, "rand_fgsm": 0.1}, pgd={"eps": 8 / 255, "step": 2 / 255, "iters": 20},
    honest_alpha=4 / 255, table="table5", figure=5, subdir="cifar10", per255=True)

DATASETS = {d.name: d for d in (MNIST, CIFAR10)}
