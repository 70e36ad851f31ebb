"""Adversarial attacks for evaluating purification defenses.

One functional core for gradient attacks (:func:`pgd`, with :func:`fgsm` and :func:`bim` as
its special cases), :func:`rand_fgsm` (a random step, then FGSM), :func:`apgd` (APGD-CE / -DLR / -T)
and the score-based :func:`square` (AutoAttack's ensemble), :func:`fgsm_minimal` (the smallest FGSM step
that fools each image, for the empirical robustness), :func:`cw_l2`, :func:`deepfool`,
:func:`trust_region` and the L0 attack :func:`jsma`; the threat models of a defense are
expressed by wrapping the *model*: :func:`bpda` for non-differentiable stages, :func:`eot`
for randomized ones, both for a randomized non-differentiable defense such as TVM. The attacks
are named in one place, :mod:`purify.attacks.registry` (:func:`get_attack_spec`: norm, budget,
settings, a uniform :meth:`~purify.attacks.registry.AttackSpec.run`).
Every attack takes ``model_fn(x) -> logits`` with images in [0, 1], returns a new detached
``x_adv`` in [0, 1], leaves ``x`` and the model's ``.grad`` untouched, and works the same
inside ``torch.no_grad()``.

Quickstart::

    >>> import torch
    >>> from purify.attacks import pgd, fgsm, bpda, eot
    >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> adv = pgd(clf, x, y, eps=8 / 255, step=2 / 255, iters=10)
    >>> noisy = lambda v: (v + 0.05 * torch.randn_like(v)).clamp(0, 1)   # a randomized stage
    >>> defended = eot(lambda v: clf(bpda(noisy)(v)), samples=4)          # BPDA + EOT threat model
    >>> adv = fgsm(defended, x, y, eps=8 / 255)
    >>> list_attacks()
    ['fgsm', 'rand_fgsm', 'bim', 'pgd', 'apgd', 'square', 'fgsm_minimal', 'cw_l2', 'deepfool', 'trust_region', 'jsma']
"""

from purify.attacks.apgd import apgd, dlr_loss
from purify.attacks.counting import CountedModel
from purify.attacks.cw import CWResult, cw_l2, cw_l2_details
from purify.attacks.deepfool import deepfool, rho2
from purify.attacks.fgsm_minimal import fgsm_minimal
from purify.attacks.gradient import bim, ce_loss, fgsm, margin_loss, pgd
from purify.attacks.jsma import jsma
from purify.attacks.rand_fgsm import rand_fgsm
from purify.attacks.registry import AttackSpec, get_attack_spec, list_attacks
from purify.attacks.square import square
from purify.attacks.trust_region import trust_region
from purify.attacks.wrappers import EOT, bpda, eot

__all__ = [
    "pgd", "fgsm", "bim", "cw_l2", "deepfool", "rho2", "bpda", "eot", "EOT", "CountedModel", "list_attacks",
    "cw_l2_details", "CWResult", "ce_loss", "margin_loss", "AttackSpec", "get_attack_spec", "apgd", "square", "trust_region",
    "dlr_loss", "rand_fgsm", "jsma", "fgsm_minimal",
]
