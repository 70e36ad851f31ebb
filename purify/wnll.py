"""WNLL head: label feature vectors by harmonic interpolation against a labelled template set.

The weighted nonlocal Laplacian (Wang et al. 2018; ``../shared/papers/wnll-tvm-defense.txt`` §3)
replaces a classifier's softmax. Over the nodes ``X = queries ∪ templates`` it builds a k-nearest-
neighbour graph (k = 15 by default, other nodes only) with weights

    w(x, y) = exp(-(d(x, y) / σ(x))²)   for y among the k nearest neighbours of x, else 0,

σ(x) the distance from x to its ``k_sigma``-th (8th) neighbour, and solves, for every unlabelled
node x (every query), the Euler–Lagrange equation of the paper's Eq. (3)

    Σ_{y ∈ X} (w(x,y) + w(y,x)) (u(x) - u(y)) + (γ - 1) Σ_{y ∈ T} w(y,x) (u(x) - u(y)) = 0,
    u(t) = onehot(label(t)) for t ∈ T,        γ = |X| / |T|.

Written as a linear system in the query values, ``A u = b`` with

    A = D - S,    S_xy = w(x,y) + w(y,x)            (query-query edges, symmetric),
    c_xt = w(x,t) + γ·w(t,x)                         (query-template edges),
    D_x = Σ_y S_xy + Σ_t c_xt,    b_x = Σ_t c_xt · onehot(label(t)).

A is symmetric and diagonally dominant, so conjugate gradients solves it (all C label columns at
once, Jacobi preconditioned); u(x) is a convex combination of template labels: its entries lie
in [0, 1] and sum to 1. The label is ``argmax u``, the scores are u.

Two modes:

* ``"transductive"`` (the paper's): the queries of one call share one graph, so a query's
  prediction depends on its batch-mates. Results change with batch composition and size.
* ``"inductive"`` (the default): each query is interpolated against the templates alone, i.e. on
  the graph over ``{x} ∪ T``. There is one unknown, so the solution is closed-form,
  ``u(x) = Σ_t c_xt onehot(t) / Σ_t c_xt``, and results are batch-consistent. The right choice
  for serving.

Everything is torch: exact kNN by chunked ``cdist`` + ``topk`` (memory bounded by
``chunk_elements``), CPU or CUDA, differentiable with respect to the queries almost everywhere
(gradients flow through the distances and the CG iterations; the neighbour selection itself is
piecewise constant).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> feats = torch.randn(40, 8, generator=g); labels = torch.arange(40) % 4
    >>> feats += 4 * torch.nn.functional.one_hot(labels, 8).float()   # 4 separated clusters
    >>> templates = TemplateSet(feats, labels, {"num_classes": 4})
    >>> queries = 4 * torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 8).float()
    >>> wnll_interpolate(queries, templates, k=5, k_sigma=3).argmax(1).tolist()
    [0, 1, 2, 3]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from purify._artifacts import SHIPPED_DIR, load_artifact, resolve_artifact, save_artifact  # noqa: F401 - SHIPPED_DIR re-exported
from purify._checks import check_choice, check_device, check_int
from purify.errors import DTypeError, PurifyError, RangeError, ShapeError

__all__ = ["TemplateSet", "WNLLError", "wnll_interpolate", "WNLLHead", "knn", "DEFAULT_K", "DEFAULT_K_SIGMA"]

DEFAULT_K = 15
DEFAULT_K_SIGMA = 8
# cdist blocks hold at most this many distances (32 MB in float32), whatever the set sizes; a block's
# working set is a handful of arrays of that size (weights, masks), so peak memory stays in the
# hundreds of MB even against 50,000 templates (benchmarks/results/wnll_scaling.md).
DEFAULT_CHUNK_ELEMENTS = 1 << 23
_MODES = ("inductive", "transductive")


class WNLLError(PurifyError, ValueError):
    """A template set or a query batch that WNLL cannot interpolate (the message says why)."""


# ----------------------------------------------------------------------------------------------
# Template sets
# ----------------------------------------------------------------------------------------------


@dataclass
class TemplateSet:
    """Labelled feature vectors that WNLL interpolates from.

    Args:
        features: (M, D) floating tensor, finite.
        labels: (M,) integer tensor with values in 0..C-1.
        meta: JSON-serializable facts about the set. ``num_classes`` (default: max label + 1) and
            ``class_names`` are used; ``build`` records the extractor, split, indices and seed.

    Saved as ``<path>.safetensors`` (``features``, ``labels``) plus ``<path>.json`` (meta and the
    sha256 of the safetensors file, checked on load); never pickle.

    Example:
        >>> ts = TemplateSet(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> ts.num_classes, len(ts), ts.dim
        (3, 6, 3)
    """

    features: Tensor
    labels: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fn = "TemplateSet"
        if not isinstance(self.features, Tensor) or not self.features.is_floating_point():
            raise DTypeError(f"{fn}: expected features to be a floating torch.Tensor (M, D), got "
                             f"{type(self.features).__name__}{_dtype_of(self.features)}")
        if self.features.ndim != 2:
            raise ShapeError(f"{fn}: expected features of shape (M, D), got {tuple(self.features.shape)}; "
                             "flatten per-image features first, e.g. feats.flatten(1)")
        if not isinstance(self.labels, Tensor) or self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
            raise DTypeError(f"{fn}: expected labels to be an integer torch.Tensor (M,), got "
                             f"{type(self.labels).__name__}{_dtype_of(self.labels)}")
        if self.labels.shape != (self.features.shape[0],):
            raise ShapeError(f"{fn}: expected labels of shape ({self.features.shape[0]},) to match features "
                             f"{tuple(self.features.shape)}, got {tuple(self.labels.shape)}")
        if self.features.shape[0] == 0:
            raise WNLLError(f"{fn}: the template set is empty; build it from at least k + 1 labelled images "
                            "(the paper uses 500, 50 per class)")
        if not bool(torch.isfinite(self.features).all()):
            raise WNLLError(f"{fn}: features contain NaN or inf; check the feature extractor's input "
                            "(images in [0, 1]) and weights")
        self.labels = self.labels.to(torch.long)
        self.meta = dict(self.meta)
        c = self.meta.get("num_classes")
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if c is None:
            c = hi + 1
        if not isinstance(c, int) or c < 1:
            raise DTypeError(f"{fn}: expected meta['num_classes'] to be a positive int, got {c!r}")
        if lo < 0 or hi >= c:
            raise WNLLError(f"{fn}: labels must lie in 0..{c - 1} (num_classes = {c}), got values in {lo}..{hi}; "
                            "map class names to 0..C-1 or set meta['num_classes']")
        self.meta["num_classes"] = c
        self._neighbours: dict[int, tuple[_Stamp, tuple[Tensor, Tensor]]] = {}

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TemplateSet":
        """A copy on ``device`` / in ``dtype`` (the features only; labels stay int64)."""
        if device is not None:
            device = check_device("TemplateSet.to", device)
        out = TemplateSet(self.features.to(device=device, dtype=dtype), self.labels.to(device=device), self.meta)
        return out

    def neighbours(self, k: int, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
        """Distances and indices of each template's ``k`` nearest other templates, (M, k) each.

        Cached per ``k`` for as long as ``features`` is the same tensor in the same state (see
        :class:`_Stamp`): replacing it, editing it in place or copying into it recomputes the lists.
        """
        hit = self._neighbours.get(k)
        if hit is not None and hit[0].matches(self.features):
            return hit[1]
        stamp = _Stamp.of(self.features)
        lists = knn(self.features, self.features, k, exclude_self=True, chunk_elements=chunk_elements)
        if stamp is not None:
            self._neighbours[k] = (stamp, lists)
        return lists

    @classmethod
    def build(cls, extractor: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, *,
              per_class: int | None = None, num_classes: int | None = None, batch_size: int = 256,
              generator: torch.Generator | None = None, meta: Mapping[str, Any] | None = None) -> "TemplateSet":
        """Features of labelled images, optionally ``per_class`` images drawn at random from each class.

        Args:
            extractor: maps an image batch (B, C, H, W) to features (B, D) (or (B, ...), flattened),
                e.g. ``model.features`` of a purify model. Run under ``torch.no_grad``.
            images: (N, C, H, W) in [0, 1]; labels: (N,) integers.
            per_class: templates per class (None: all images).
            generator: the draw of the per-class subset (default: torch's global RNG).
            meta: extra facts to record (extractor name, split, ...).

        Example:
            >>> ts = TemplateSet.build(lambda x: x.mean((2, 3)), torch.rand(20, 3, 4, 4),
            ...                        torch.arange(20) % 2, per_class=3, generator=torch.Generator().manual_seed(0))
            >>> len(ts), ts.meta["per_class"]
            (6, 3)
        """
        fn = "TemplateSet.build"
        if not isinstance(images, Tensor) or images.ndim < 2:
            raise DTypeError(f"{fn}: expected images as a tensor (N, C, H, W), got {type(images).__name__}")
        if not isinstance(labels, Tensor) or labels.shape != (images.shape[0],):
            raise ShapeError(f"{fn}: expected labels of shape ({images.shape[0]},), got "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
        labels = labels.to(torch.long)
        c = int(labels.max()) + 1 if num_classes is None else check_int(fn, num_classes, name="num_classes")
        if per_class is None:
            chosen = torch.arange(len(labels))
        else:
            per_class = check_int(fn, per_class, name="per_class")
            parts = []
            for cls_id in range(c):
                idx = torch.nonzero(labels.cpu() == cls_id).flatten()
                if len(idx) < per_class:
                    raise WNLLError(f"{fn}: class {cls_id} has {len(idx)} images, fewer than per_class = {per_class}")
                parts.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
            chosen = torch.sort(torch.cat(parts)).values
        feats = []
        with torch.no_grad():
            for start in range(0, len(chosen), batch_size):
                batch = images[chosen[start:start + batch_size]]
                feats.append(extractor(batch).flatten(1).float().cpu())
        info = {"num_classes": c, "per_class": per_class, "indices": chosen.tolist(), **dict(meta or {})}
        return cls(torch.cat(feats), labels.cpu()[chosen], info)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json``; returns the json path."""
        tensors = {"features": self.features.detach().cpu().contiguous(), "labels": self.labels.cpu().contiguous()}
        return save_artifact(path, tensors, {"format": TEMPLATE_SET_FORMAT, "meta": self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> "TemplateSet":
        """Load a saved set (a path, with or without extension), checking the sha256 recorded in its json."""
        fn = "TemplateSet.load"
        device = check_device(fn, device)
        json_path = resolve_artifact(path, format=TEMPLATE_SET_FORMAT, what="template set", fn=fn)
        tensors, cfg = load_artifact(json_path, expected_format=TEMPLATE_SET_FORMAT, fn=fn)
        _require(path, tensors, ("features", "labels"))
        return cls(tensors["features"].to(device), tensors["labels"].to(device), cfg.get("meta", {}))


class _Stamp:
    """The state of some tensors that a cache was computed from; ``matches`` says whether it still holds.

    A tensor's state is the object itself (held here, so its id cannot be reused), its version
    counter, which every in-place op bumps (``load_state_dict``'s ``copy_`` and ``mul_`` included),
    and its storage address, device, dtype and shape, which change when ``.data`` is reassigned or
    ``torch.utils.swap_tensors`` swaps contents (neither bumps the counter). A write that bypasses
    the counter (through ``t.data`` or a numpy view) is not seen: autograd misses those as well.
    Inference tensors have no version counter, so nothing computed from them is cached
    (:meth:`of` returns None).
    """

    __slots__ = ("tensors", "marks")

    def __init__(self, tensors: tuple[Tensor, ...]) -> None:
        self.tensors = tensors
        self.marks = _marks(tensors)

    @classmethod
    def of(cls, *tensors: Tensor) -> "_Stamp | None":
        return None if any(t.is_inference() for t in tensors) else cls(tensors)

    def matches(self, *tensors: Tensor) -> bool:
        return (len(tensors) == len(self.tensors) and all(a is b for a, b in zip(self.tensors, tensors))
                and not any(t.is_inference() for t in tensors) and _marks(tensors) == self.marks)


def _marks(tensors: tuple[Tensor, ...]) -> tuple:
    return tuple((t._version, t.data_ptr(), t.device, t.dtype, t.shape) for t in tensors)


def _dtype_of(x: object) -> str:
    return f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""


def _require(path: object, tensors: Mapping[str, Tensor], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise WNLLError(f"{path}: the artifact lacks tensors {missing}; it was not written by purify, or is damaged")


# ----------------------------------------------------------------------------------------------
# The graph and the solve
# ----------------------------------------------------------------------------------------------


def knn(a: Tensor, b: Tensor, k: int, *, exclude_self: bool = False,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours in ``b`` of each row of ``a`` (Euclidean), ascending.

    Rows of ``a`` are processed in chunks so that at most ``chunk_elements`` distances exist at
    once. ``exclude_self`` (``a`` is ``b``) leaves each point out of its own list.

    Shape:
        a: (N, D), b: (M, D) -> distances (N, k), indices (N, k) into b.

    Example:
        >>> d, i = knn(torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([[0.0], [1.0], [3.0]]), 1,
        ...            exclude_self=True)
        >>> i.flatten().tolist(), d.flatten().tolist()
        ([1, 0, 1], [1.0, 1.0, 2.0])
    """
    rows = max(1, chunk_elements // max(1, b.shape[0]))
    # Without autograd, one distance buffer is reused for every chunk: allocating a fresh block per
    # chunk makes glibc's heap grow by gigabytes over a 50,000 x 50,000 graph (its mmap threshold
    # adapts upwards and the freed blocks stay in the heap; benchmarks/results/wnll_scaling.md).
    # Tracing (ONNX export) records plain ops: in-place writes into a reused buffer do not export.
    reuse = not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)) and not torch.jit.is_tracing()
    if reuse:
        buf = a.new_empty(min(rows, a.shape[0]), b.shape[0])
        b_sq = (b * b).sum(1)
    dists, idxs = [], []
    for start in range(0, a.shape[0], rows):
        chunk = a[start:start + rows]
        if reuse:
            # |x - y|² = |x|² + |y|² - 2 x·y, the formula cdist itself uses for sets this large
            d = torch.mm(chunk, b.T, out=buf[:chunk.shape[0]])
            d.mul_(-2).add_((chunk * chunk).sum(1, keepdim=True)).add_(b_sq).clamp_(min=0).sqrt_()
        else:
            d = torch.cdist(chunk, b)
        if exclude_self:
            r = torch.arange(d.shape[0], device=d.device)
            fill = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
            d = d.index_put_((r, r + start), fill) if reuse else d.index_put((r, r + start), fill)
        v, i = torch.topk(d, k, dim=1, largest=False)
        dists.append(v)
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


def _check_queries(fn: str, queries: object, templates: TemplateSet) -> Tensor:
    if not isinstance(queries, Tensor) or not queries.is_floating_point():
        raise DTypeError(f"{fn}: expected queries to be a floating torch.Tensor (B, D), got "
                         f"{type(queries).__name__}{_dtype_of(queries)}")
    if queries.ndim != 2:
        raise ShapeError(f"{fn}: expected queries of shape (B, D), got {tuple(queries.shape)}")
    if queries.shape[1] != templates.dim:
        raise ShapeError(f"{fn}: queries have {queries.shape[1]} features but the templates have {templates.dim}; "
                         "build the template set with the same feature extractor (and buffer block) as the queries")
    if not bool(torch.isfinite(queries).all()):
        bad = (~torch.isfinite(queries)).any(1).nonzero().flatten().tolist()
        raise WNLLError(f"{fn}: queries {bad[:8]} contain NaN or inf features; check the input images "
                        "(finite, in [0, 1])")
    return queries


def _weights(d: Tensor, sigma: Tensor) -> Tensor:
    """exp(-(d / σ)²) with σ kept away from 0 (eight duplicates of a point give σ = 0)."""
    tiny = torch.finfo(d.dtype).tiny ** 0.25
    return torch.exp(-(d / sigma.clamp_min(tiny)) ** 2)


def _inductive(q: Tensor, t: TemplateSet, k: int, ks: int, chunk_elements: int) -> Tensor:
    """u(x) on the graph over {x} ∪ T, for each query x independently: (B, C)."""
    m = len(t)
    gamma = (m + 1) / m
    t_d, _ = t.neighbours(k, chunk_elements=chunk_elements)          # (M, k): template -> other templates
    t_kth, t_sig = t_d[:, k - 1], t_d[:, ks - 1]
    # σ of a template once x joins its neighbour list ahead of the ks-th: the (ks-1)-th old one or x.
    t_sig_prev = t_d[:, ks - 2] if ks >= 2 else torch.zeros_like(t_sig)
    onehot = nn.functional.one_hot(t.labels, t.num_classes).to(q.dtype)
    rows = max(1, chunk_elements // m)
    out = []
    for start in range(0, q.shape[0], rows):
        d = torch.cdist(q[start:start + rows], t.features)            # (b, M)
        dk, ik = torch.topk(d, k, dim=1, largest=False)
        w_out = _weights(dk, dk[:, ks - 1:ks])                        # w(x, t) for x's k neighbours
        c = torch.zeros_like(d).scatter(1, ik, w_out)
        # w(t, x): x is among t's k nearest in T ∪ {x} iff it is closer than t's k-th template.
        joins = d < t_kth
        sig = torch.where(d < t_sig, torch.maximum(d, t_sig_prev), t_sig)
        c = c + gamma * torch.where(joins, _weights(d, sig), torch.zeros_like(d))
        out.append((c @ onehot) / c.sum(1, keepdim=True))
    return torch.cat(out)


def _transductive(q: Tensor, t: TemplateSet, k: int, ks: int, tol: float, max_iter: int,
                  chunk_elements: int) -> Tensor:
    """u on the graph over Q ∪ T (queries share it), by Jacobi-preconditioned CG: (B, C)."""
    b, m = q.shape[0], len(t)
    gamma = (b + m) / m
    # Queries' neighbours among Q ∪ T (other nodes only): index < b is a query, else template (index - b).
    q_d, q_i = knn(q, torch.cat([q, t.features]), k, exclude_self=True, chunk_elements=chunk_elements)
    w_q = _weights(q_d, q_d[:, ks - 1:ks])                             # w(x, ·), (B, k)
    # Templates' neighbours among T ∪ Q: their template-template lists merged with distances to the queries.
    t_d, _ = t.neighbours(k, chunk_elements=chunk_elements)
    rows = max(1, chunk_elements // max(1, b))
    src, dst, val = [], [], []
    for start in range(0, m, rows):
        d_tq = torch.cdist(t.features[start:start + rows], q)         # (r, B)
        merged = torch.cat([t_d[start:start + rows], d_tq], 1)
        md, mi = torch.topk(merged, k, dim=1, largest=False)
        w = _weights(md, md[:, ks - 1:ks])
        is_q = mi >= k                                                 # the chosen neighbour is a query
        r_idx, c_idx = is_q.nonzero(as_tuple=True)
        src.append(r_idx + start)                                      # template
        dst.append(mi[r_idx, c_idx] - k)                               # query
        val.append(w[r_idx, c_idx])
    t_src, t_dst, t_val = torch.cat(src), torch.cat(dst), torch.cat(val)

    rows_q = torch.arange(b, device=q.device).repeat_interleave(k)
    cols, wv = q_i.flatten(), w_q.flatten()
    qq = cols < b
    # S = W_QQ + W_QQ^T as an edge list (both directions); c_xt = w(x,t) + γ w(t,x).
    s_rows = torch.cat([rows_q[qq], cols[qq]])
    s_cols = torch.cat([cols[qq], rows_q[qq]])
    s_val = torch.cat([wv[qq], wv[qq]])
    c_rows = torch.cat([rows_q[~qq], t_dst])
    c_tmpl = torch.cat([cols[~qq] - b, t_src])
    c_val = torch.cat([wv[~qq], gamma * t_val])
    C = t.num_classes
    onehot = nn.functional.one_hot(t.labels[c_tmpl], C).to(q.dtype)
    rhs = torch.zeros(b, C, dtype=q.dtype, device=q.device).index_add(0, c_rows, c_val[:, None] * onehot)
    diag = (torch.zeros(b, dtype=q.dtype, device=q.device).index_add(0, s_rows, s_val)
            .index_add(0, c_rows, c_val))

    def matvec(u: Tensor) -> Tensor:
        return diag[:, None] * u - torch.zeros_like(u).index_add(0, s_rows, s_val[:, None] * u[s_cols])

    u = conjugate_gradient(matvec, rhs, 1.0 / diag[:, None], tol=tol, max_iter=max_iter)
    # A query component with no path to a template has an all-zero right-hand side and u = 0 there;
    # the harmonic extension is undefined, so such queries fall back to the inductive answer.
    stranded = u.detach().sum(1) < 0.5
    if bool(stranded.any()):
        u = torch.where(stranded[:, None], _inductive(q, t, k, ks, chunk_elements), u)
    return u


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], rhs: Tensor, inv_diag: Tensor, *, tol: float,
                       max_iter: int) -> Tensor:
    """Preconditioned CG for a symmetric positive (semi)definite A, every column of ``rhs`` at once.

    Each column has its own step sizes (the columns are independent systems sharing A). Stops
    when every column's residual is below ``tol`` times its right-hand side's norm. Written with
    out-of-place ops so autograd can differentiate through the iterations.

    Shape:
        rhs: (N, C), inv_diag: (N, 1) -> solution (N, C).

    Example:
        >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> x = conjugate_gradient(lambda v: a @ v, torch.tensor([[1.0], [2.0]], dtype=torch.float64),
        ...                        torch.ones(2, 1, dtype=torch.float64), tol=1e-12, max_iter=10)
        >>> [round(v, 6) for v in x.flatten().tolist()]
        [0.090909, 0.636364]
    """
    x = torch.zeros_like(rhs)
    r = rhs
    z = inv_diag * r
    p = z
    rz = (r * z).sum(0)
    stop = tol * torch.linalg.vector_norm(rhs.detach(), dim=0)
    for _ in range(max_iter):
        if bool((torch.linalg.vector_norm(r.detach(), dim=0) <= stop).all()):
            break
        ap = matvec(p)
        pap = (p * ap).sum(0)
        alpha = torch.where(pap > 0, rz / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        z = inv_diag * r
        rz_new = (r * z).sum(0)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return x


def wnll_interpolate(queries: Tensor, templates: TemplateSet, *, k: int = DEFAULT_K, k_sigma: int = DEFAULT_K_SIGMA,
                     mode: str = "inductive", tol: float | None = None, max_iter: int = 2000,
                     chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Tensor:
    """Interpolate template labels onto ``queries`` by the weighted nonlocal Laplacian.

    ``mode="transductive"`` is the paper's: all queries of this call share one graph with the
    templates, so **a query's scores depend on its batch-mates** (batch composition and size).
    ``mode="inductive"`` (default) interpolates each query against the templates alone and is
    batch-consistent: ``wnll_interpolate(q)[i] == wnll_interpolate(q[i:i+1])[0]``.

    Args:
        queries: (B, D) floating features, finite, on the templates' device.
        templates: the labelled set (same feature space).
        k: neighbours per node (other nodes only); k_sigma: σ = distance to the k_sigma-th of them.
        tol: CG stopping tolerance on the relative residual (transductive; default 1e-6 in float32,
            1e-12 in float64). max_iter: CG iteration cap.
        chunk_elements: bound on the distances held at once.

    Returns:
        (B, C) scores: convex combinations of one-hot template labels (rows sum to 1).

    Raises:
        ShapeError: feature-dimension mismatch. WNLLError: NaN features, k too large for the graph.
    """
    fn = "wnll_interpolate"
    if not isinstance(templates, TemplateSet):
        raise DTypeError(f"{fn}: expected templates to be a TemplateSet, got {type(templates).__name__}; "
                         "wrap features and labels: TemplateSet(features, labels)")
    mode = check_choice(fn, mode, name="mode", choices=_MODES)
    queries = _check_queries(fn, queries, templates)
    k = check_int(fn, k, name="k")
    k_sigma = check_int(fn, k_sigma, name="k_sigma")
    if k_sigma > k:
        raise RangeError(f"{fn}: k_sigma = {k_sigma} must not exceed k = {k} (σ is the distance to the k_sigma-th "
                         "of the k neighbours)")
    # Templates need k other templates for their own neighbour lists; the graph has len + 1 (inductive)
    # or len + B (transductive) nodes, and k must be below that count.
    if k >= len(templates):
        raise WNLLError(f"{fn}: k = {k} needs at least k + 1 = {k + 1} templates, got {len(templates)}; "
                        "use more templates or a smaller k")
    if templates.features.device != queries.device:
        raise DTypeError(f"{fn}: queries are on {queries.device} but the templates on {templates.features.device}; "
                         "move one: templates.to(queries.device)")
    if queries.shape[0] == 0:
        return queries.new_zeros(0, templates.num_classes)
    t = templates if templates.features.dtype == queries.dtype else templates.to(dtype=queries.dtype)
    if mode == "inductive":
        return _inductive(queries, t, k, k_sigma, chunk_elements)
    if tol is None:
        tol = 1e-12 if queries.dtype == torch.float64 else 1e-6
    return _transductive(queries, t, k, k_sigma, tol, max_iter, chunk_elements)


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------


class WNLLHead(nn.Module):
    """A classifier head: optional buffer block (Linear + ReLU), then WNLL against a template set.

    The templates live in the buffer block's output space (they were made by the same backbone
    and buffer). ``forward`` returns the interpolated scores; ``log_scores`` their log, which
    behaves like logits for argmax, softmax and cross-entropy (``DefendedClassifier`` uses it).

    Args:
        templates: the labelled set.
        buffer: ``nn.Sequential(nn.Linear(D_in, D), nn.ReLU())`` or None (templates in the
            backbone's feature space).
        k, k_sigma, mode: as in :func:`wnll_interpolate` (default ``"inductive"``).
        surrogate: the linear branch trained beside WNLL (``nn.Linear(D, C)``), kept for attackers:
            the paper's white-box attack differentiates ``surrogate(buffer(features))``. Not used
            by ``forward``.

    Shape:
        features: (B, D_in) -> scores (B, C).

    Example:
        >>> ts = TemplateSet(torch.randn(30, 4), torch.arange(30) % 3)
        >>> WNLLHead(ts, k=5, k_sigma=3)(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, templates: TemplateSet, *, buffer: nn.Module | None = None, k: int = DEFAULT_K,
                 k_sigma: int = DEFAULT_K_SIGMA, mode: str = "inductive", surrogate: nn.Linear | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        fn = "WNLLHead"
        if not isinstance(templates, TemplateSet):
            raise DTypeError(f"{fn}: expected templates to be a TemplateSet, got {type(templates).__name__}")
        self.mode = check_choice(fn, mode, name="mode", choices=_MODES)
        self.k, self.k_sigma = check_int(fn, k, name="k"), check_int(fn, k_sigma, name="k_sigma")
        if self.k_sigma > self.k:
            raise RangeError(f"{fn}: k_sigma = {self.k_sigma} must not exceed k = {self.k}")
        if self.k >= len(templates):
            raise WNLLError(f"{fn}: k = {self.k} needs at least {self.k + 1} templates, got {len(templates)}")
        self.buffer = buffer
        self.surrogate = surrogate
        self.register_buffer("template_features", templates.features.detach().clone())
        self.register_buffer("template_labels", templates.labels.clone())
        self.template_meta = dict(templates.meta)
        self.meta = dict(meta or {})
        self.sha256: str | None = None        # set by load(): the artifact's checksum
        self._cached: tuple[_Stamp, TemplateSet] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.template_meta["num_classes"])

    @property
    def templates(self) -> TemplateSet:
        """The template set of the head's current buffers (device, dtype, values), neighbour lists cached.

        The cached set is reused only while both buffers are the same tensors in the same state
        (:class:`_Stamp`), so ``load_state_dict``, ``.to()`` and in-place edits all rebuild it.
        """
        buffers = (self.template_features, self.template_labels)
        cached = self._cached
        if cached is not None and cached[0].matches(*buffers) and cached[1].num_classes == self.num_classes:
            return cached[1]
        stamp = _Stamp.of(*buffers)
        ts = TemplateSet(self.template_features, self.template_labels, self.template_meta)
        self._cached = None if stamp is None else (stamp, ts)
        return ts

    def embed(self, features: Tensor) -> Tensor:
        """Backbone features -> the template space (the buffer block, when there is one)."""
        features = features.flatten(1)
        return features if self.buffer is None else self.buffer(features)

    def forward(self, features: Tensor) -> Tensor:
        t = self.templates
        q = self.embed(features)
        if q.dtype != t.features.dtype:
            q = q.to(t.features.dtype)
        return wnll_interpolate(q, t, k=self.k, k_sigma=self.k_sigma, mode=self.mode)

    def surrogate_logits(self, features: Tensor) -> Tensor:
        """The linear branch's logits on the buffer block's output (the paper's attack surrogate)."""
        if self.surrogate is None:
            raise WNLLError("WNLLHead.surrogate_logits: this head has no linear branch (a plain head, or one "
                            "saved without it); attack the backbone's own logits instead")
        return self.surrogate(self.embed(features))

    def log_scores(self, features: Tensor) -> Tensor:
        """log(scores), floored at the dtype's tiny so a zero score stays finite."""
        s = self.forward(features)
        return torch.log(s.clamp_min(torch.finfo(s.dtype).tiny))

    def extra_repr(self) -> str:
        return (f"templates={len(self.template_labels)}, classes={self.num_classes}, k={self.k}, "
                f"k_sigma={self.k_sigma}, mode={self.mode!r}")

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write the head (buffer weights and templates) as safetensors + json; returns the json path."""
        tensors = {"templates.features": self.template_features.detach().cpu().contiguous(),
                   "templates.labels": self.template_labels.cpu().contiguous()}
        buffer_cfg = None
        if self.buffer is not None:
            lin = _buffer_linear(self.buffer)
            tensors["buffer.weight"] = lin.weight.detach().cpu().contiguous()
            tensors["buffer.bias"] = lin.bias.detach().cpu().contiguous()
            buffer_cfg = {"in_features": lin.in_features, "out_features": lin.out_features, "activation": "relu"}
        surrogate_cfg = None
        if self.surrogate is not None:
            tensors["surrogate.weight"] = self.surrogate.weight.detach().cpu().contiguous()
            tensors["surrogate.bias"] = self.surrogate.bias.detach().cpu().contiguous()
            surrogate_cfg = {"in_features": self.surrogate.in_features, "out_features": self.surrogate.out_features}
        cfg = {"format": HEAD_FORMAT, "k": self.k, "k_sigma": self.k_sigma, "mode": self.mode,
               "buffer": buffer_cfg, "surrogate": surrogate_cfg, "templates": self.template_meta, **self.meta, **extra}
        return save_artifact(path, tensors, cfg)

    @classmethod
    def load(cls, path: str | os.PathLike, *, mode: str | None = None, k: int | None = None,
             k_sigma: int | None = None, device: torch.device | str = "cpu") -> "WNLLHead":
        """Load a saved head (sha256 checked); ``mode``, ``k`` and ``k_sigma`` override the saved ones.

        ``path`` is a file path (with or without extension) or the name of a shipped artifact in
        ``purify/weights`` (e.g. ``"resnet56_wnll"``), resolved by :func:`purify._artifacts.resolve_artifact`.

        Raises:
            DataNotFoundError (the message lists the shipped heads), ChecksumError, ArtifactError, WNLLError.
        """
        fn = "WNLLHead.load"
        device = check_device(fn, device)
        json_path = resolve_artifact(path, format=HEAD_FORMAT, what="head", fn=fn,
                                     hint="make one with python -m purify.training.wnll")
        tensors, cfg = load_artifact(json_path, expected_format=HEAD_FORMAT, fn=fn)
        _require(path, tensors, ("templates.features", "templates.labels"))
        buffer = None
        if cfg.get("buffer"):
            _require(path, tensors, ("buffer.weight", "buffer.bias"))
            b = cfg["buffer"]
            buffer = make_buffer(b["in_features"], b["out_features"])
            lin = _buffer_linear(buffer)
            if tuple(tensors["buffer.weight"].shape) != (b["out_features"], b["in_features"]):
                raise WNLLError(f"{path}: buffer.weight has shape {tuple(tensors['buffer.weight'].shape)}, the json "
                                f"says ({b['out_features']}, {b['in_features']})")
            with torch.no_grad():
                lin.weight.copy_(tensors["buffer.weight"])
                lin.bias.copy_(tensors["buffer.bias"])
        surrogate = None
        if cfg.get("surrogate"):
            _require(path, tensors, ("surrogate.weight", "surrogate.bias"))
            surrogate = nn.Linear(cfg["surrogate"]["in_features"], cfg["surrogate"]["out_features"])
            with torch.no_grad():
                surrogate.weight.copy_(tensors["surrogate.weight"])
                surrogate.bias.copy_(tensors["surrogate.bias"])
        templates = TemplateSet(tensors["templates.features"], tensors["templates.labels"], cfg.get("templates", {}))
        known = {"format", "k", "k_sigma", "mode", "buffer", "surrogate", "templates", "weights_file", "sha256"}
        head = cls(templates, buffer=buffer, k=k or cfg.get("k", DEFAULT_K),
                   k_sigma=k_sigma or cfg.get("k_sigma", DEFAULT_K_SIGMA),
                   mode=mode or cfg.get("mode", "inductive"), surrogate=surrogate,
                   meta={k: v for k, v in cfg.items() if k not in known})
        head.sha256 = cfg["sha256"]
        return head.to(device).eval()


def make_buffer(in_features: int, out_features: int) -> nn.Sequential:
    """The paper's buffer block: a fully connected layer followed by a ReLU."""
    return nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU())


def _buffer_linear(buffer: nn.Module) -> nn.Linear:
    lin = buffer[0] if isinstance(buffer, nn.Sequential) and len(buffer) else buffer
    if not isinstance(lin, nn.Linear):
        raise DTypeError(f"WNLLHead.save: expected the buffer block to be nn.Sequential(nn.Linear, nn.ReLU) "
                         f"(see make_buffer), got {type(buffer).__name__}")
    return lin


#: Artifact formats (the json's "format" field); files resolve and load through :mod:`purify._artifacts`,
#: whose ``SHIPPED_DIR`` (``purify/weights``) this module re-exports.
HEAD_FORMAT = "purify.wnll_head"
TEMPLATE_SET_FORMAT = "purify.template_set"
