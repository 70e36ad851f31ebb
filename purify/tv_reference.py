"""Exact masked-TV solutions with cvxpy: the oracle for tests and benchmarks.

Never on the request path: one image at a time, an interior-point solve
(Clarabel) of the same objective that :func:`purify.tv_minimize` approximates.

The objective, per image, summed over channels c::

    F(z) = sum_c ||(1 - X_c) * (z_c - x_c)||_2^2  +  weight * TV(z_c)
    TV(u) = sum_{i,j} sqrt((u[i+1,j] - u[i,j])^2 + (u[i,j+1] - u[i,j])^2)

with forward differences that are zero across the last row / column (Neumann
boundary), i.e. the isotropic TV that ``skimage.restoration.denoise_tv_chambolle``
also uses. ``X`` is the drop mask (1 = dropped: no fidelity term there).
"""

from __future__ import annotations

import numpy as np
import torch

from purify.errors import DTypeError, ShapeError

__all__ = ["tv_objective", "total_variation", "tv_minimize_exact"]


def _forward_diffs(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along H and W, zero on the last row / column. Shapes equal z's."""
    dh = torch.zeros_like(z)
    dw = torch.zeros_like(z)
    dh[..., :-1, :] = z[..., 1:, :] - z[..., :-1, :]
    dw[..., :, :-1] = z[..., :, 1:] - z[..., :, :-1]
    return dh, dw


def total_variation(z: torch.Tensor) -> torch.Tensor:
    """Isotropic TV per image, summed over channels.

    Shape:
        z: (B, C, H, W); output: (B,), float64. Differentiable, with the zero subgradient where
        the image is locally flat.
    Example:
        >>> total_variation(torch.zeros(2, 3, 8, 8)).tolist()
        [0.0, 0.0]
    """
    dh, dw = _forward_diffs(z.double())
    n2 = dh * dh + dw * dw
    # sqrt has an infinite derivative at 0, and TV minimizers have exactly flat regions: take the
    # zero subgradient there instead of producing NaN gradients.
    flat = n2 == 0
    return torch.where(flat, torch.zeros_like(n2), torch.sqrt(torch.where(flat, torch.ones_like(n2), n2))).sum(dim=(1, 2, 3))


def tv_objective(z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None, weight: float | torch.Tensor) -> torch.Tensor:
    """The masked-TV objective ``||(1-X)*(z-x)||^2 + weight*TV(z)`` per image, in float64.

    Shape:
        z, x: (B, C, H, W); mask: broadcastable to x (e.g. (H, W), (B, 1, H, W),
        (B, C, H, W)), 1 = dropped, or None for no drop; weight: float or (B,).
        Output: (B,) float64.
    Example:
        >>> x = torch.rand(1, 3, 8, 8)
        >>> float(tv_objective(x, x, None, 0.0))
        0.0
    """
    if z.shape != x.shape or z.dim() != 4:
        raise ShapeError(f"tv_objective: expected z and x of the same (B, C, H, W) shape, got {tuple(z.shape)} and {tuple(x.shape)}")
    zd, xd = z.double(), x.double()
    keep = torch.ones_like(xd) if mask is None else (1.0 - mask.double()).expand_as(xd)
    fidelity = (keep * (zd - xd)).square().sum(dim=(1, 2, 3))
    w = torch.as_tensor(weight, dtype=torch.float64, device=zd.device).reshape(-1)
    return fidelity + w * total_variation(zd)


def tv_minimize_exact(x: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None, weight: float,
                      *, solver: str = "CLARABEL") -> torch.Tensor:
    """Solve the masked-TV problem for one image exactly (to solver tolerance) with cvxpy.

    Channels are independent, so each is solved as its own second-order cone program.

    Shape:
        x: (C, H, W) in [0, 1]; mask: (H, W) or (C, H, W), 1 = dropped, or None.
        Output: (C, H, W) float64 tensor (not clipped: the exact minimizer already lies in [0, 1]).
    Example:
        >>> z = tv_minimize_exact(torch.rand(1, 6, 5), None, 0.05)
        >>> z.shape
        torch.Size([1, 6, 5])
    """
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - depends on the extra being installed
        raise ImportError("tv_minimize_exact needs cvxpy: pip install 'purify[bench]'") from err
    xa = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if xa.ndim != 3:
        raise ShapeError(f"tv_minimize_exact: expected x of shape (C, H, W), got {xa.shape}; pass one image")
    c_, h, w = xa.shape
    if mask is None:
        ma = np.zeros((c_, h, w))
    else:
        ma = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float64)
        if ma.shape not in ((h, w), (c_, h, w)):
            raise ShapeError(f"tv_minimize_exact: expected mask of shape {(h, w)} or {(c_, h, w)}, got {ma.shape}")
        ma = np.broadcast_to(ma, (c_, h, w))
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
        raise DTypeError(f"tv_minimize_exact: expected weight to be a float, got {type(weight).__name__}")

    out = np.empty_like(xa)
    for c in range(c_):
        z = cp.Variable((h, w))
        keep = 1.0 - ma[c]
        fidelity = cp.sum_squares(cp.multiply(keep, z - xa[c]))
        out[c] = _solve_channel(cp, z, fidelity, float(weight), h, w, solver)
    return torch.from_numpy(out)


def _solve_channel(cp, z, fidelity, weight: float, h: int, w: int, solver: str) -> np.ndarray:
    """Minimize fidelity + weight * isotropic TV(z) for one (H, W) channel."""
    terms = []
    if h > 1 and w > 1:
        # Interior pixels have both differences: sum of 2-norms of the stacked pair.
        dh = z[1:, :-1] - z[:-1, :-1]
        dw = z[:-1, 1:] - z[:-1, :-1]
        pairs = cp.vstack([cp.vec(dh, order="C"), cp.vec(dw, order="C")])
        terms.append(cp.sum(cp.norm(pairs, 2, axis=0)))
    if w > 1:  # last row: only the W difference
        terms.append(cp.sum(cp.abs(z[h - 1, 1:] - z[h - 1, :-1])))
    if h > 1:  # last column: only the H difference
        terms.append(cp.sum(cp.abs(z[1:, w - 1] - z[:-1, w - 1])))
    tv = cp.sum(cp.hstack(terms)) if terms else 0
    problem = cp.Problem(cp.Minimize(fidelity + weight * tv))
    problem.solve(solver=solver)
    if z.value is None:
        raise RuntimeError(f"tv_minimize_exact: {solver} returned no solution (status {problem.status})")
    return np.asarray(z.value)
