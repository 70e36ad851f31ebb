"""Image quality, clean-accuracy cost and speed of trained cleaning generators (GCLN).

For each generator artifact, on ``--count`` CIFAR-10 test images:

* **quality**: PSNR and SSIM (scikit-image, ``data_range=1``, over the three channels) against
  the clean image of G(clean), of G(attacked), of the attacked image itself, and of the DCT
  quantization alone (``dct_quantize`` at the generator's q) — what G adds over its own layer;
* **accuracy**: ResNet-56 on clean, G(clean), attacked and G(attacked) images. The attacked
  images are made on the *undefended* ResNet-56 (FGSM and PGD 10 x 1/255 from a random start, at
  ``--eps``): the transfer setting, i.e. what G removes when the attacker ignores it. Adaptive
  attacks are in the harness runs (``benchmarks/configs/gcln_*.toml``);
* **speed**: images/s of G alone at batch 1 and 256, in float32, median of timed repeats after a
  warm-up, at each ``--threads`` setting; parameters and FLOPs from the artifact.

    python -m benchmarks.gcln_quality --data-dir ../shared/data --weights gcln_cifar10 gcln_cifar10_q5

writes ``benchmarks/results/gcln_quality.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

RESULTS = Path(__file__).resolve().parent / "results"


def psnr_ssim(reference: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of ``images`` against ``reference``, both (N, 3, H, W) in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = reference.permute(0, 2, 3, 1).double().numpy()
    img = images.permute(0, 2, 3, 1).double().clamp(0, 1).numpy()
    p = [peak_signal_noise_ratio(r, i, data_range=1.0) for r, i in zip(ref, img)]
    s = [structural_similarity(r, i, data_range=1.0, channel_axis=-1) for r, i in zip(ref, img)]
    return float(np.mean(np.minimum(p, 100.0))), float(np.mean(s))    # identical images: PSNR inf -> capped


def _batched(fn, x: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])


def _attack(name: str, model, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int = 250) -> torch.Tensor:
    from purify.attacks import fgsm, pgd

    out = []
    g = torch.Generator().manual_seed(0)
    for s in tqdm(range(0, len(x), batch_size), desc=name, leave=False):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        if name == "fgsm":
            out.append(fgsm(model, xb, yb, eps=eps))
        else:
            out.append(pgd(model, xb, yb, eps=eps, step=1 / 255, iters=10, random_start=True, generator=g))
    return torch.cat(out)


def images_per_second(fn, batch: int, *, seconds: float = 3.0, shape=(3, 32, 32)) -> float:
    """Median images/s of ``fn`` on a random batch, over repeats filling about ``seconds``."""
    x = torch.rand(batch, *shape)
    with torch.no_grad():
        fn(x)
        times, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 3:
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gcln_quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz and weights/ (default: $PURIFY_DATA_DIR)")
    ap.add_argument("--weights", nargs="+", default=["gcln_cifar10"], help="generator artifacts (shipped names or paths)")
    ap.add_argument("--count", type=int, default=1000, help="test images (the first COUNT)")
    ap.add_argument("--eps", default=Fraction(8, 255), type=Fraction, help="attack budget (L-inf), as p/q or a float")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts for the speed rows")
    ap.add_argument("--skip-speed", action="store_true", help="quality and accuracy only")
    ap.add_argument("--out", default=str(RESULTS / "gcln_quality.md"))
    args = ap.parse_args(argv)

    from purify.data import load_dataset
    from purify.dct import dct_quantize
    from purify.gcln import load_generator
    from purify.models import create_model

    eps = float(args.eps)
    t_start = time.perf_counter()
    torch.set_num_threads(max(args.threads))
    ds = load_dataset("cifar10", "test", data_dir=args.data_dir)
    x, y = ds.tensors(np.arange(args.count))
    model = create_model("resnet56", pretrained=True, data_dir=args.data_dir).eval().requires_grad_(False)
    acc = lambda imgs: float((_batched(model, imgs).argmax(1) == y).float().mean()) * 100  # noqa: E731
    attacked = {name: _attack(name, model, x, y, eps) for name in ("fgsm", "pgd")}

    quality = [("clean", "none", *psnr_ssim(x, x), acc(x))]
    quality += [(f"{n} {args.eps}", "none", *psnr_ssim(x, xa), acc(xa)) for n, xa in attacked.items()]
    speed, gens, quantizers = [], [], set()
    for w in tqdm(args.weights, desc="generators"):
        g = load_generator(w)
        gens.append((w, g))
        label = f"{w} (q={g.q:g})"
        sources = (("clean", x), *((f"{n} {args.eps}", xa) for n, xa in attacked.items()))
        if (g.q, g.block_size) not in quantizers:       # G's own layer alone: what the network adds over it
            quantizers.add((g.q, g.block_size))
            for src_name, src in sources:
                dct = _batched(lambda v: dct_quantize(v, q=g.q, block_size=g.block_size), src)
                quality.append((src_name, f"DCT only, q={g.q:g}", *psnr_ssim(x, dct), acc(dct)))
        for src_name, src in sources:
            cleaned = _batched(g, src)
            quality.append((src_name, label, *psnr_ssim(x, cleaned), acc(cleaned)))
        for threads in [] if args.skip_speed else args.threads:
            torch.set_num_threads(threads)
            for batch in (1, 256):
                speed.append((label, threads, batch, images_per_second(g, batch)))
        torch.set_num_threads(max(args.threads))

    lines = ["# GCLN: image quality, clean-accuracy cost and speed", "",
             f"{args.count} CIFAR-10 test images (the first {args.count}); classifier: the pretrained ResNet-56. "
             f"Attacked images are made on the undefended ResNet-56 (FGSM; PGD 10 x 1/255 from a random start) "
             f"at eps {args.eps}, so the accuracy column is the *transfer* setting; adaptive attacks are in "
             "`gcln_table*/` and `gcln_q_sweep/`. PSNR (dB, capped at 100) and SSIM are means over images "
             "against the clean image (scikit-image, data range 1).", "",
             "| input | purification | PSNR vs clean | SSIM vs clean | ResNet-56 accuracy % |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {src} | {how} | {p:.2f} | {s:.4f} | {a:.1f} |" for src, how, p, s, a in quality]
    if speed:
        lines += ["", "Speed of G alone (float32, CPU, median over repeats after a warm-up):", "",
                  "| generator | parameters | MFLOPs per 32x32 image | torch threads | batch | images/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        params = {f"{w} (q={g.q:g})": (g.artifact["parameters"], g.artifact["flops_32x32"] / 1e6) for w, g in gens}
        lines += [f"| {lab} | {params[lab][0]:,} | {params[lab][1]:.1f} | {t} | {b} | {ips:.0f} |"
                  for lab, t, b, ips in speed]
    lines += ["", "## Run", "", "```", "python -m benchmarks.gcln_quality " + " ".join(map(shlex.quote, argv)), "```", "",
              f"- machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
              f"{'GPU: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
              f"1-minute load average at the end {os.getloadavg()[0]:.2f} (a shared machine: speed figures are noisy)",
              f"- generators: " + "; ".join(f"{w}: sha256 {g.artifact['sha256'][:12]}" for w, g in gens),
              f"- torch {torch.__version__}, Python {platform.python_version()}",
              f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
              f"wall time {time.perf_counter() - t_start:.0f} s", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
