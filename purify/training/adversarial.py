"""Train a robust reference classifier: a recipe of :mod:`purify.training.recipes` in :func:`~.trainer.fit`.

Commands (what made the shipped artifacts; see the README's "Robust reference models")::

    python -m purify.training.adversarial --data-dir ../shared/data --dataset mnist --model lenet5 \\
        --recipe pgd_at --eps 0.3 --epochs 10 --out purify/weights/lenet5_mnist_at --threads 1
    python -m purify.training.adversarial --data-dir ../shared/data --dataset cifar10 --model resnet20 \\
        --recipe fgsm_rs --eps 8/255 --epochs 5 --out purify/weights/resnet20_cifar10_at --threads 1

The model trains on the ``train`` split (the training set minus its last 5,000 images), is
validated after every epoch on the first ``--val-count`` images of the ``val`` split (those last
5,000; clean and PGD-``--val-iters`` accuracy at the training eps) and ends with the weights of its
best PGD-validation epoch. A collapse of the PGD validation accuracy by more than
``--co-threshold`` points below its best (catastrophic overfitting) stops the run early. The test
set is read once, at the end: clean accuracy and PGD-k accuracy (L∞, random start, step
``--test-step``) for each k of ``--test-iters``, on the first ``--test-count`` test images.

Checkpoints go to ``--checkpoint`` (default ``<cache>/adversarial_runs/<out name>-<hash>.pt``) every
``--checkpoint-every`` seconds and at each epoch end; ``--resume`` continues from one along the same
path (same ``--threads``). A resumed run that had already finished only re-does the test
evaluation and the artifact.

The BReLU/GDA paper's networks and recipes (Zantedeschi et al. 2017; :mod:`purify.models.paper_nets`,
:mod:`purify.training.gda_recipes`): ``--model cnn_mnist`` / ``resnet_mnist`` / ``cnn_cifar10`` /
``resnet_cifar10`` with ``--activation relu|brelu`` (recorded in the artifact's architecture), and
``--recipe gda`` (``--gda-sigma``, ``--gda-copies``), ``label_smoothing`` (``--true-weight``),
``fgsm_at`` (``--eps``, ``--clean-weight``) or ``vat`` (``--vat-eps``, ``--vat-xi``, ``--vat-weight``),
whose defaults are the paper's settings for the dataset. Deep Defense (Yan et al. 2018) and its peers:
``--recipe deep_defense`` (``--dd-*``), ``parseval`` (``--parseval-*``) and ``deepfool_at`` (Adv. Train I,
``--df-clean-weight``; it needs ``--init-from``: its examples come from that fixed model); Adv. Train II
is ``fgsm_at``; its networks are ``--model mlp_mnist`` / ``lenet_mnist`` / ``convnet_cifar10``. These networks
see pixels in [0, 1]
unnormalized, as in the paper (the json's mean 0, std 1). For example::

    python -m purify.training.adversarial --data-dir ../shared/data --dataset mnist --model cnn_mnist \
        --activation brelu --recipe gda --epochs 6 --out runs/cnn_mnist_gda_brelu --threads 1

Output: ``<out>.safetensors`` (the network's state dict), ``<out>.json`` (format
``purify.trained_classifier``: architecture, normalization, recipe, eps, learning curve, validation
and test figures, the command, sha256) and ``<out>.log``; :func:`purify.models.create_model` loads
the shipped ones by name (``lenet5_mnist_at``, ``resnet20_cifar10_at``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from purify._artifacts import artifact_log_path, artifact_paths, save_artifact
from purify._download import cache_root
from purify.data import VAL_SIZE, load_dataset
from purify.models.lenet import MNIST_MEAN, MNIST_STD
from purify.models.normalize import Normalized
from purify.models.trained import ARTIFACT_FORMAT, build_network, load_trained
from purify.training._logging import training_log
from purify.models import create_model
from purify.training.recipes import RECIPES, TVM_REGIMES, TVMAugment, make_recipe, parse_fraction
from purify.training.trainer import SCHEDULES, TrainConfig, evaluate, fit, recipe_validation

__all__ = ["DATASETS", "MODELS", "ACTIVATION_RECORDS", "main"]

log = logging.getLogger("purify.training.adversarial")

#: Per dataset: normalization inside the model, augmentation, and the defaults that differ.
DATASETS: dict[str, dict[str, Any]] = {
    # CIFAR-10: Wong et al.'s settings (SGD 0.9, weight decay 5e-4, one cycle peaking at 0.2 halfway).
    # gda_sigma, fgsm_at_eps: the BReLU/GDA paper's settings (section 4.1) for its recipes gda and fgsm_at.
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616), "augment": "crop_flip",
                "input_size": [3, 32, 32], "lr": 0.2, "peak": 0.5, "val_iters": 10, "val_step": None,
                "test_iters": "20", "test_step": None, "gda_sigma": 0.05, "fgsm_at_eps": "0.05"},
    # MNIST: no augmentation; the one cycle peaks at 2/5 as in Wong et al.'s MNIST code. The test
    # attack is the usual PGD-40 with step 0.01 (Madry et al.), and PGD-100 as a check that it has converged;
    # validation uses PGD-40 with step 0.01 too: large steps (eps/4) overrate FGSM-trained MNIST models
    # (53 % under PGD-10 at step 0.075 vs 20 % under PGD-40 at 0.01 in our FGSM-RS run).
    "mnist": {"mean": MNIST_MEAN, "std": MNIST_STD, "augment": "none", "input_size": [1, 28, 28], "lr": 0.05,
              "peak": 0.4, "val_iters": 40, "val_step": 0.01, "test_iters": "40,100", "test_step": 0.01,
              "gda_sigma": 0.3, "fgsm_at_eps": "0.3"},
}
#: ``--init-from`` names that are pretrained registry checkpoints rather than trained artifacts.
_REGISTRY_INIT = ("resnet20", "resnet56")
#: ``--model`` -> (architecture record for :func:`purify.models.trained.build_network`, its dataset).
#: A record with an ``"activation"`` takes ``--activation`` (the default is the record's).
MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "resnet20": ({"type": "CifarResNet", "depth": 20, "num_classes": 10}, "cifar10"),
    "resnet56": ({"type": "CifarResNet", "depth": 56, "num_classes": 10}, "cifar10"),
    "lenet5": ({"type": "LeNet5", "num_classes": 10, "in_channels": 1}, "mnist"),
    # the BReLU/GDA paper's networks (purify.models.paper_nets)
    "cnn_mnist": ({"type": "PaperCNN", "in_channels": 1, "image_size": [28, 28], "num_classes": 10,
                   "activation": "relu"}, "mnist"),
    "resnet_mnist": ({"type": "PaperResNet", "in_channels": 1, "image_size": [28, 28], "num_classes": 10,
                      "activation": "relu"}, "mnist"),
    "cnn_cifar10": ({"type": "PaperCNN", "in_channels": 3, "image_size": [32, 32], "num_classes": 10,
                     "activation": "relu"}, "cifar10"),
    "resnet_cifar10": ({"type": "PaperResNet", "in_channels": 3, "image_size": [32, 32], "num_classes": 10,
                        "activation": "relu"}, "cifar10"),
    # the Deep Defense paper's networks (purify.models.paper_nets; its Table 4)
    "mlp_mnist": ({"type": "PaperMLP", "in_channels": 1, "image_size": [28, 28], "num_classes": 10}, "mnist"),
    "lenet_mnist": ({"type": "PaperLeNet", "in_channels": 1, "image_size": [28, 28], "num_classes": 10}, "mnist"),
    "convnet_cifar10": ({"type": "PaperConvNet", "in_channels": 3, "image_size": [32, 32], "num_classes": 10},
                        "cifar10"),
}
#: ``--activation`` names and what they put in the architecture record (the paper's bounded ReLU has t = 1).
ACTIVATION_RECORDS = {"relu": {"activation": "relu"}, "brelu": {"activation": "brelu", "t": 1.0}}


def _uint8_nchw(ds, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` images as a uint8 NCHW tensor (4x smaller than floats; the trainer converts per batch)."""
    sl = slice(0, count or None)
    x = torch.from_numpy(np.array(ds.x[sl].transpose(0, 3, 1, 2), order="C"))   # a writable copy
    return x, torch.from_numpy(np.array(ds.y[sl], dtype=np.int64))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m purify.training.adversarial", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--data-dir", default=None, help="folder with <dataset>_{train,test}.npz (default: $PURIFY_DATA_DIR)")
    a("--dataset", choices=tuple(DATASETS), required=True)
    a("--model", choices=tuple(MODELS), required=True)
    a("--recipe", choices=tuple(RECIPES), required=True)
    a("--eps", default=None, help="L∞ budget, a number or a fraction such as 8/255 (default 0; fgsm_at: the paper's "
      "0.3 MNIST, 0.05 CIFAR-10); with eps > 0 the test set is also attacked with PGD at eps")
    a("--alpha", default=None, help="fgsm_rs step (default 1.25·eps)")
    a("--pgd-step", default=None, help="pgd_at step (default eps/4)")
    a("--pgd-iters", type=int, default=7, help="pgd_at iterations")
    a("--gda-sigma", type=float, default=None, help="gda: std of the Gaussian noise in pixel units (default: the "
      "paper's 0.3 MNIST, 0.05 CIFAR-10)")
    a("--gda-copies", type=int, default=10, help="gda: noisy copies per image and step (the paper's 10; fewer "
      "for a smaller CPU budget, recorded in the artifact)")
    a("--true-weight", type=float, default=0.9, help="label_smoothing: the true label's target probability (the "
      "paper's 0.9; the rest is spread evenly over the other classes)")
    a("--clean-weight", type=float, default=0.5, help="fgsm_at: weight α of the clean loss in "
      "α·J(x) + (1-α)·J(x_fgsm) (Goodfellow et al.'s and the paper's 0.5)")
    a("--vat-eps", type=float, default=2.1, help="vat: L2 norm of the virtual adversarial perturbation (the "
      "paper's 2.1)")
    a("--vat-xi", type=float, default=None, help="vat: finite-difference step of the power iteration (default: "
      "none, the exact Hessian-vector product, which Miyato et al.'s 1e-6 approximates)")
    a("--vat-weight", type=float, default=1.0, help="vat: weight of the KL term (Miyato et al.'s α = 1)")
    a("--dd-lambda", type=float, default=15.0, help="deep_defense: weight λ of the penalty (the paper's 15)")
    a("--dd-c", type=float, default=25.0, help="deep_defense: c, correctly classified samples (the paper's 25)")
    a("--dd-d", type=float, default=5.0, help="deep_defense: d, misclassified samples (the paper's 5)")
    a("--dd-iters", type=int, default=5, help="deep_defense: unrolled DeepFool iterations (the authors' 5)")
    a("--dd-classes", type=int, default=None, help="deep_defense: candidate classes per DeepFool step (default all)")
    a("--parseval-beta", type=float, default=None, help="parseval: retraction step β (default: 1e-4 MNIST, "
      "3e-4 CIFAR-10, Cissé et al.'s grid)")
    a("--parseval-fraction", type=float, default=0.3, help="parseval: share of each weight's rows retracted per step")
    a("--df-clean-weight", type=float, default=0.0, help="deepfool_at (Adv. Train I): weight of the clean loss "
      "(0: the DeepFool examples of the starting model only)")
    a("--activation", choices=tuple(ACTIVATION_RECORDS), default=None,
      help="activation of the paper's networks (cnn_*, resnet_*): relu (default) or brelu (bounded ReLU, t = 1)")
    a("--epochs", type=int, required=True)
    a("--batch-size", type=int, default=128)
    a("--lr", type=float, default=None, help="peak learning rate (default: 0.2 CIFAR-10, 0.05 MNIST)")
    a("--momentum", type=float, default=0.9)
    a("--weight-decay", type=float, default=5e-4)
    a("--schedule", choices=SCHEDULES, default="cyclic")
    a("--peak", type=float, default=None, help="where the cyclic schedule peaks (default 0.5 CIFAR-10, 0.4 MNIST)")
    a("--val-count", type=int, default=1000, help="validation images evaluated after each epoch")
    a("--val-iters", type=int, default=None, help="PGD iterations of the per-epoch validation (default: 10 "
      "CIFAR-10, 40 MNIST)")
    a("--val-step", default=None, help="step of the validation PGD (default: eps/4 CIFAR-10, 0.01 MNIST)")
    a("--co-threshold", type=float, default=20.0,
      help="points below the best PGD validation accuracy that count as catastrophic overfitting")
    a("--test-count", type=int, default=None, help="test images evaluated at the end (default: all)")
    a("--test-iters", default=None, help="comma-separated PGD iterations of the test evaluation "
      "(default: 20 CIFAR-10, 40,100 MNIST)")
    a("--test-step", default=None, help="step of the test PGD (default: eps/4 CIFAR-10, 0.01 MNIST)")
    a("--train-count", type=int, default=None, help="smoke runs: the first N training images (default: all)")
    a("--init-from", default=None, help="start from the weights of a trained artifact of the same architecture "
      "(a shipped name or a path), e.g. one trained at a smaller eps (a curriculum), or of a pretrained "
      "registry model (resnet20, resnet56: fine-tuning keeps that checkpoint's input normalization)")
    a("--tvm-regime", choices=("none", *TVM_REGIMES), default="none",
      help="train on TVM-purified images ('tvm') or on the images and their purified copies ('both'), fresh "
           "masks every batch (the WNLL/TVM paper's data regimes)")
    a("--tvm-weight", type=float, default=0.1, help="TVM weight of --tvm-regime")
    a("--tvm-drop", type=float, default=0.3, help="TVM drop probability of --tvm-regime")
    a("--seed", type=int, default=0)
    a("--out", required=True, help="artifact path without extension, e.g. purify/weights/lenet5_mnist_at")
    a("--checkpoint", default=None, help="checkpoint file (default: <cache>/adversarial_runs/<out name>-<hash>.pt)")
    a("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints within an epoch")
    a("--resume", action="store_true", help="continue from the checkpoint")
    a("--keep", choices=("best", "last"), default="best",
      help="the weights the artifact gets: the best validation epoch's (default), or the last epoch's (for a "
           "fine-tune of a checkpoint that saw the validation images, e.g. --init-from resnet56)")
    a("--threads", type=int, default=1, help="torch CPU threads (resume with the same number)")
    a("--device", default="cpu", help="cpu or cuda[:N]")
    a("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.eps is None:     # fgsm_at's budget defaults to the paper's for the dataset; the others' to no attack
        args.eps = DATASETS[args.dataset]["fgsm_at_eps"] if args.recipe == "fgsm_at" else "0"
    try:
        args.eps_value = parse_fraction(args.eps)
        args.alpha_value = None if args.alpha is None else parse_fraction(args.alpha)
        args.pgd_step_value = None if args.pgd_step is None else parse_fraction(args.pgd_step)
        args.test_step_value = None if args.test_step is None else parse_fraction(args.test_step)
        args.val_step_value = None if args.val_step is None else parse_fraction(args.val_step)
    except ValueError as err:
        parser.error(str(err))
    if MODELS[args.model][1] != args.dataset:
        parser.error(f"--model {args.model} is for {MODELS[args.model][1]}, not {args.dataset}")
    if args.activation is not None and "activation" not in MODELS[args.model][0]:
        with_act = ", ".join(m for m, (arch, _) in MODELS.items() if "activation" in arch)
        parser.error(f"--activation applies to {with_act}, not {args.model}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    # "purify.training": this module's records and the trainer's (purify.training.trainer) go to the log
    with training_log(logging.getLogger("purify.training"), artifact_log_path(out), append=args.resume):
        return _run(args, argv, out)


def _run(args: argparse.Namespace, argv: list[str], out: Path) -> int:
    ds_cfg = DATASETS[args.dataset]
    arch = dict(MODELS[args.model][0])
    if args.activation is not None:
        arch = {**{k: v for k, v in arch.items() if k != "t"}, **ACTIVATION_RECORDS[args.activation]}
    eps = args.eps_value
    command = "python -m purify.training.adversarial " + shlex.join(a for a in argv if a != "--resume")
    out_hash = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]     # two runs never share a checkpoint
    checkpoint = (Path(args.checkpoint) if args.checkpoint
                  else cache_root() / "adversarial_runs" / f"{out.name}-{out_hash}.pt")
    device = torch.device(args.device)
    log.info("command: %s%s", command, " (resumed)" if args.resume else "")
    log.info("machine: %s, torch %s, %d threads, device %s; checkpoint %s", platform.platform(),
             torch.__version__, torch.get_num_threads(), device, checkpoint)
    train_ds = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    train = _uint8_nchw(train_ds, args.train_count)
    val = _uint8_nchw(load_dataset(args.dataset, "val", data_dir=args.data_dir), args.val_count)
    torch.manual_seed(args.seed)                      # the initial weights
    mean, std = ds_cfg["mean"], ds_cfg["std"]
    registry_init = args.init_from in _REGISTRY_INIT
    if registry_init:       # a public checkpoint expects its own normalization: keep it
        source = create_model(args.init_from, pretrained=True, data_dir=args.data_dir)
        mean, std = source.pretrained_cfg.mean, source.pretrained_cfg.std
    net = build_network(arch)
    if getattr(net, "pixel_input", False) and not registry_init:
        # a network that takes [0, 1] pixels as they are, as in its paper (the bounded ReLU's t is set for them)
        mean, std = (0.0,) * ds_cfg["input_size"][0], (1.0,) * ds_cfg["input_size"][0]
    model = Normalized(net, mean=mean, std=std).to(device)
    init_from = None
    if registry_init:
        model.model.load_state_dict(source.model.state_dict())     # another architecture fails here
        init_from = {"registry": args.init_from, "sha256": source.pretrained_cfg.sha256}
        log.info("starting from the pretrained %s (sha256 %s)", args.init_from, source.pretrained_cfg.sha256[:12])
    elif args.init_from:
        where = Path(args.init_from)                    # a shipped name, or a path with or without .json
        source = load_trained(where.with_suffix("").name if where.suffix == ".json" else where.name,
                              weights_dir=where.parent if where.parent.parts else None)   # sha256 checked
        model.model.load_state_dict(source.model.state_dict())     # another architecture fails here
        raw = source.pretrained_cfg.raw
        init_from = {"artifact": args.init_from, "sha256": raw["sha256"], "recipe": raw.get("recipe"),
                     "command": raw.get("command")}
        log.info("starting from %s (sha256 %s, recipe %s)", args.init_from, raw["sha256"][:12], raw.get("recipe"))
    recipe = make_recipe(args.recipe, eps=eps, step=args.pgd_step_value, iters=args.pgd_iters,
                         alpha=args.alpha_value,
                         sigma=ds_cfg["gda_sigma"] if args.gda_sigma is None else args.gda_sigma,
                         copies=args.gda_copies, true_weight=args.true_weight, clean_weight=args.clean_weight,
                         vat_eps=args.vat_eps, xi=args.vat_xi, vat_weight=args.vat_weight,
                         dd_lambda=args.dd_lambda, dd_c=args.dd_c, dd_d=args.dd_d, dd_iters=args.dd_iters,
                         dd_classes=args.dd_classes, parseval_fraction=args.parseval_fraction,
                         parseval_beta=(1e-4 if args.dataset == "mnist" else 3e-4) if args.parseval_beta is None
                         else args.parseval_beta, df_clean_weight=args.df_clean_weight)
    if hasattr(recipe, "freeze"):      # Adv. Train I: the fixed model its examples come from is the starting one
        if not args.init_from:
            raise SystemExit(f"python -m purify.training.adversarial: error: --recipe {args.recipe} needs --init-from "
                             "(the reference model whose DeepFool examples it trains on)")
        recipe.freeze(model)
    if args.tvm_regime != "none":
        recipe = TVMAugment(recipe, regime=args.tvm_regime, weight=args.tvm_weight, drop_prob=args.tvm_drop)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr or ds_cfg["lr"],
                      momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
                      peak=args.peak or ds_cfg["peak"], augment=ds_cfg["augment"], seed=args.seed,
                      val_count=len(val[0]), val_eps=eps if recipe.adversarial else 0.0,
                      val_step=args.val_step_value or ds_cfg["val_step"] or eps / 4,
                      val_iters=ds_cfg["val_iters"] if args.val_iters is None else args.val_iters,
                      co_threshold=args.co_threshold,
                      checkpoint_every_s=args.checkpoint_every)
    log.info("%s (%s parameters) on %s %s: %s training images, %d validation images, recipe %s, %s",
             args.model, f"{sum(p.numel() for p in model.parameters()):,}", args.dataset, arch, f"{len(train[0]):,}",
             len(val[0]), recipe.config(), cfg)
    t0 = time.perf_counter()
    result = fit(model, recipe, train, val, config=cfg, checkpoint=checkpoint, resume=args.resume, device=device,
                 progress=not args.no_progress)
    if result.stopped:
        log.warning("run stopped early: %s; the model is epoch %d's", result.stopped, result.best_epoch)
    kept = result.best_epoch
    if args.keep == "last" and not result.stopped:
        # the checkpoint holds the weights at the end of the last epoch (fit() left the best ones in the model)
        model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True)["model"])
        kept = len(result.history)
        log.info("keeping the last epoch's weights (epoch %d; --keep last), not the best validation epoch's (%d)",
                 kept, result.best_epoch)
    elif registry_init:
        log.warning("selected on validation images the pretrained %s was trained on: the choice favours the epochs "
                    "nearest the starting point (use --keep last for a fine-tune)", args.init_from)
    kept_row = next(r for r in result.history if r["epoch"] == kept)
    test_iters = tuple(int(k) for k in (args.test_iters or ds_cfg["test_iters"]).split(",") if k)
    test_step = args.test_step_value or ds_cfg["test_step"] or eps / 4
    test = _uint8_nchw(load_dataset(args.dataset, "test", data_dir=args.data_dir), args.test_count)
    metrics = evaluate(model, *test, eps=eps, step=test_step, iters=test_iters if eps > 0 else (), seed=args.seed,
                       device=device, progress=not args.no_progress, desc="test")
    # the recipe's own figures on the test set too (accuracy behind TVM, WNLL accuracy)
    metrics.update(recipe_validation(model, recipe, *test, seed=args.seed + 2, device=device))
    log.info("epoch %d: val clean %.2f%%%s; test (%d images): %s", kept, kept_row["val_clean"],
             f", val pgd{cfg.val_iters} {kept_row['val_pgd']:.2f}%" if kept_row["val_pgd"] is not None else "",
             len(test[0]), ", ".join(f"{k} {v:.2f}%" for k, v in metrics.items()))
    n_train_full = len(train_ds) + VAL_SIZE
    config = {
        "format": ARTIFACT_FORMAT, "name": out.name, "arch": arch, "dataset": args.dataset,
        "input_size": ds_cfg["input_size"], "mean": list(mean), "std": list(std),
        "classes": list(train_ds.classes), "recipe": recipe.config(), "eps": eps, "eps_text": args.eps,
        "command": command,
        "data": {"train": f"'train' split: the first {len(train_ds):,} of the {n_train_full:,} training images"
                          + (f", of which the first {len(train[0]):,}" if args.train_count else ""),
                 "train_count": len(train[0]), "augment": cfg.augment,
                 "val": f"the first {len(val[0]):,} images of the 'val' split (the last {VAL_SIZE:,} training "
                        "images, never trained on)", "val_count": len(val[0]),
                 "test": f"the first {len(test[0]):,} images of the test set", "test_count": len(test[0])},
        "training": {**{k: v for k, v in vars(cfg).items()}, "init_from": init_from, "epochs_run": len(result.history),
                     "stopped": result.stopped, "best_epoch": result.best_epoch, "kept_epoch": kept,
                     "selection": ("the last epoch (--keep last: a fine-tune of a checkpoint trained on the validation "
                                   "images, whose validation figures favour the starting point)" if args.keep == "last"
                                   else "best PGD validation accuracy" if recipe.adversarial else
                                   f"best validation score: {recipe.score_text}"
                                   if hasattr(recipe, "validation_score") else "best clean validation accuracy"),
                     "train_seconds": round(result.train_seconds), "images_per_s": round(result.images_per_s, 1),
                     "threads": torch.get_num_threads(), "device": str(device), "torch": str(torch.__version__),
                     "history": result.history},
        "val": {"clean": kept_row["val_clean"], "pgd": kept_row["val_pgd"],
                **{k[4:]: v for k, v in kept_row.items() if k.startswith("val_") and k not in
                   ("val_clean", "val_pgd")},
                "attack": (f"L∞ PGD-{cfg.val_iters}, eps {args.eps}, step {cfg.val_step:g}, one random start"
                           if recipe.adversarial else None)},
        "test": {**metrics, "attack": (f"L∞ PGD-k for k in {list(test_iters)}, eps {args.eps}, step {test_step:g}, "
                                      "one random start, cross-entropy") if eps > 0 else None},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()}
    json_path = save_artifact(out, state, config)
    log.info("wrote %s and %s in %.0f s", artifact_paths(json_path)[0], json_path.name, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
