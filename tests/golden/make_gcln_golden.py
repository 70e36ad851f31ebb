"""Write ``tests/golden/gcln_cifar10.npz``: fixed inputs and the shipped generator's outputs on them.

Run after retraining the shipped generator (``purify/weights/gcln_cifar10``), on purpose:

    python -m tests.golden.make_gcln_golden

The inputs are synthetic 32x32 images (smooth ramps, edges, a checkerboard, seeded noise; no
dataset images are committed), drawn once and stored, so the test never depends on a random
number generator's stream. The file records the artifact's sha256; the test fails, telling you
to run this script, when the shipped weights change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / "gcln_cifar10.npz"


def golden_inputs() -> np.ndarray:
    """(5, 3, 32, 32) float32 images in [0, 1]."""
    rng = np.random.default_rng(20261121)
    i, j = np.meshgrid(np.arange(32) / 31, np.arange(32) / 31, indexing="ij")
    ramp = np.stack([i, j, (i + j) / 2])
    edges = np.stack([(i > 0.5), (j > 0.3), ((i - 0.5) ** 2 + (j - 0.5) ** 2 < 0.1)]).astype(float)
    checker = np.broadcast_to(((np.arange(32)[:, None] // 4 + np.arange(32)[None] // 4) % 2), (3, 32, 32)) * 0.8 + 0.1
    noisy = np.clip(ramp + rng.uniform(-8 / 255, 8 / 255, ramp.shape), 0, 1)
    uniform = rng.uniform(0, 1, (3, 32, 32))
    return np.stack([ramp, edges, checker, noisy, uniform]).astype(np.float32)


def main() -> None:
    from purify.gcln import load_generator

    g = load_generator("gcln_cifar10")
    x = golden_inputs()
    with torch.no_grad():
        out = g(torch.from_numpy(x)).numpy()
    np.savez_compressed(GOLDEN, inputs=x, outputs=out, sha256=np.array(g.artifact["sha256"]))
    print(f"wrote {GOLDEN} for gcln_cifar10 sha256 {g.artifact['sha256'][:12]}")


if __name__ == "__main__":
    main()
