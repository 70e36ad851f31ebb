"""One cell's numbers: running sums over its batches (:class:`CellStats`) and its row (:func:`cell_row`).

The row's keys are the columns of ``cells.csv`` (:data:`benchmarks.harness.report.COLUMNS`);
the runner (:mod:`benchmarks.harness.runner`) fills the sums batch by batch. An image is *fooled*
when the evaluated model classifies it correctly clean and wrongly after the attack:
``attack_success_rate``, ``rho2_success``, ``rhoinf_success`` and ``train_dist`` are over those images.
"""

from __future__ import annotations

from typing import Any

import torch

from .cells import Cell
from .worst import encode_bits
from purify.attacks import rho2

__all__ = ["CellStats", "cell_row"]


class CellStats:
    """Running sums of one cell over batches."""

    def __init__(self) -> None:
        self.n = self.correct = self.clean_correct = self.flipped = 0
        self.l2 = self.linf = self.rho = 0.0
        self.rho_fooled = 0.0       # ||δ||₂ / ||x||₂ of the fooled images, summed
        self.rhoinf_fooled = 0.0    # ||δ||∞ / ||x||∞ of the fooled images, summed
        self.dist_fooled = 0.0      # their distance to the nearest training image, summed
        self.l0 = 0                 # changed values (of C*H*W), summed over images
        self.max_linf = 0.0
        self.wall = 0.0
        self.forwards = self.backwards = 0
        self.adv_correct: list[bool] = []

    def add(self, x: torch.Tensor, x_adv: torch.Tensor, adv_ok: torch.Tensor, clean_ok: torch.Tensor,
            dist: torch.Tensor | None = None) -> None:
        """One batch; ``dist``: each adversarial image's distance to the training set (needed where fooled)."""
        d = (x_adv - x).flatten(1).double()
        linf = d.abs().amax(1)
        fooled = clean_ok & ~adv_ok
        self.n += len(x)
        self.correct += int(adv_ok.sum())
        self.adv_correct += [bool(v) for v in adv_ok.tolist()]
        self.clean_correct += int(clean_ok.sum())
        self.flipped += int(fooled.sum())
        l2 = torch.linalg.vector_norm(d, dim=1)
        # the ratio as rho2() computes it (an all-zero image divides by 1e-12)
        ref = torch.linalg.vector_norm(x.flatten(1).double(), dim=1).clamp_min(1e-12)
        self.rho_fooled += float((l2 / ref)[fooled].sum())
        ref_inf = x.flatten(1).double().abs().amax(1).clamp_min(1e-12)
        self.rhoinf_fooled += float((linf / ref_inf)[fooled].sum())
        if dist is not None:
            self.dist_fooled += float(dist[fooled].sum())
        self.l2 += float(l2.sum())
        self.linf += float(linf.sum())
        self.l0 += int((d != 0).sum())
        self.max_linf = max(self.max_linf, float(linf.max()) if len(x) else 0.0)
        self.rho += rho2(x, x_adv) * len(x) if len(x) else 0.0


def cell_row(cell: Cell, s: CellStats, clean_acc: float, train_dist: bool = False) -> dict[str, Any]:
    """The cell's row; ``train_dist`` only when the run searched a training set (``[metrics]``).

    ``rho2_success``, ``rhoinf_success`` and ``train_dist`` are nan when the attack fooled no image.
    """
    nan = float("nan")
    extra = {"train_dist": s.dist_fooled / s.flipped if s.flipped else nan} if train_dist else {}
    return {
        "cell": cell.hash, "attack": cell.attack_id, "attack_name": cell.attack, "norm": cell.norm,
        "eps": cell.eps.value if cell.eps else "", "eps_label": cell.eps.label if cell.eps else "",
        "threat_model": cell.threat_model, "iters": cell.params.get("iters", ""),
        "eot_samples": cell.eot_samples or "", "params": _params_text(cell.params),
        "n_images": s.n, "clean_accuracy": clean_acc, "accuracy": s.correct / s.n if s.n else float("nan"),
        "n_clean_correct": s.clean_correct,
        "attack_success_rate": s.flipped / s.clean_correct if s.clean_correct else float("nan"),
        "mean_l2": s.l2 / s.n, "mean_linf": s.linf / s.n, "max_linf": s.max_linf, "rho2": s.rho / s.n,
        "wall_s": round(s.wall, 3), "forwards": s.forwards, "backwards": s.backwards,
        "adv_correct": encode_bits(s.adv_correct), "mean_l0": s.l0 / s.n,
        "rho2_success": s.rho_fooled / s.flipped if s.flipped else nan,
        "rhoinf_success": s.rhoinf_fooled / s.flipped if s.flipped else nan, **extra,
    }


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))
