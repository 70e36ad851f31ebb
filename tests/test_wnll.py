"""WNLL head: the solve against a dense reference and by hand, modes, artifacts, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from purify.errors import ChecksumError, DTypeError, RangeError, ShapeError
from purify.wnll import TemplateSet, WNLLError, WNLLHead, knn, make_buffer, wnll_interpolate


def dense_reference(queries: np.ndarray, feats: np.ndarray, labels: np.ndarray, c: int, k: int, ks: int) -> np.ndarray:
    """Eq. (3) of the paper assembled densely over all nodes and solved with numpy.linalg.solve."""
    x = np.concatenate([queries, feats])
    n, b = len(x), len(queries)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    w = np.zeros((n, n))
    for i in range(n):
        nb = np.argsort(d[i], kind="stable")[:k]
        sigma = d[i, nb[ks - 1]]
        w[i, nb] = np.exp(-(d[i, nb] / sigma) ** 2)
    gamma = n / len(feats)
    a = np.zeros((n, n))
    rhs = np.zeros((n, c))
    for i in range(b):                         # unlabelled rows: the Euler-Lagrange equation
        for j in range(n):
            coef = w[i, j] + w[j, i] + ((gamma - 1) * w[j, i] if j >= b else 0.0)
            a[i, i] += coef
            a[i, j] -= coef
    for i in range(b, n):                      # labelled rows: u = g
        a[i, i] = 1.0
        rhs[i, labels[i - b]] = 1.0
    return np.linalg.solve(a, rhs)[:b]


def clusters(n_per: int, c: int, dim: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(c).repeat_interleave(n_per)
    centers = 3.0 * torch.randn(c, dim, generator=g)
    feats = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats.double(), labels


class TestAgainstDenseSolve:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_transductive(self, seed):
        feats, labels = clusters(8, 3, 5, seed, spread=1.5)
        q, _ = clusters(4, 3, 5, seed + 100, spread=2.0)
        ts = TemplateSet(feats, labels)
        ours = wnll_interpolate(q, ts, k=6, k_sigma=3, mode="transductive").numpy()
        ref = dense_reference(q.numpy(), feats.numpy(), labels.numpy(), 3, 6, 3)
        assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max()
        np.testing.assert_allclose(ours.sum(1), 1.0, atol=1e-9)

    @pytest.mark.parametrize("seed", [0, 1])
    def test_inductive_is_the_dense_solve_per_query(self, seed):
        feats, labels = clusters(7, 4, 3, seed, spread=2.0)
        q, _ = clusters(2, 4, 3, seed + 7, spread=2.5)
        ts = TemplateSet(feats, labels)
        ours = wnll_interpolate(q, ts, k=5, k_sigma=2, mode="inductive").numpy()
        for i in range(len(q)):
            ref = dense_reference(q[i:i + 1].numpy(), feats.numpy(), labels.numpy(), 4, 5, 2)
            assert np.abs(ours[i] - ref[0]).max() <= 1e-6 * np.abs(ref).max()


def test_hand_computed_four_nodes():
    # 1-D: templates t1 = 0 (class 0), t2 = 5 (class 1); queries q1 = 1, q2 = 2.5; k = k_sigma = 1.
    # Edges (all weight e = exp(-1)): q1->t1, q2->q1, t1->q1, t2->q2. gamma = 4/2 = 2.
    # Rows: q1: 4 u1 - u2 = 3 e0;  q2: 3 u2 - u1 = 2 e1  =>  u1 = (9, 2)/11, u2 = (3, 8)/11.
    ts = TemplateSet(torch.tensor([[0.0], [5.0]], dtype=torch.float64), torch.tensor([0, 1]))
    u = wnll_interpolate(torch.tensor([[1.0], [2.5]], dtype=torch.float64), ts, k=1, k_sigma=1, mode="transductive")
    torch.testing.assert_close(u, torch.tensor([[9.0, 2.0], [3.0, 8.0]], dtype=torch.float64) / 11, rtol=0, atol=1e-12)


def test_hand_computed_inductive():
    # {x = 1} ∪ {t1 = 0 (class 0), t2 = 3 (class 1)}, k = k_sigma = 1, gamma = 3/2:
    # w(x,t1) = w(t1,x) = w(t2,x) = exp(-1)  =>  u = (1 + 1.5, 1.5) / 4.
    ts = TemplateSet(torch.tensor([[0.0], [3.0]], dtype=torch.float64), torch.tensor([0, 1]))
    u = wnll_interpolate(torch.tensor([[1.0]], dtype=torch.float64), ts, k=1, k_sigma=1)
    torch.testing.assert_close(u, torch.tensor([[0.625, 0.375]], dtype=torch.float64), rtol=0, atol=1e-12)


def test_inductive_is_batch_consistent_and_transductive_is_not():
    # A batch of 10 and a batch of 1 may take different cdist / GEMM kernels, so the scores agree up
    # to float noise, not bitwise. In float64 that noise is ~1e-13 here (distance² error <= (4D + 16)
    # u (|q|² + |t|²) ~ 1e-12 with u = 2^-53 and norms ~ 10, through weights whose slope in d is
    # < 2/σ), so 1e-9 leaves headroom yet is far below what a batch-mate changes (> 1e-4 below).
    feats, labels = clusters(20, 3, 6, 3, spread=2.5)
    q, _ = clusters(10, 3, 6, 4, spread=3.0)
    ts = TemplateSet(feats, labels)
    full = wnll_interpolate(q, ts, mode="inductive")
    single = torch.cat([wnll_interpolate(q[i:i + 1], ts, mode="inductive") for i in range(len(q))])
    torch.testing.assert_close(full, single, rtol=0, atol=1e-9)
    tfull = wnll_interpolate(q, ts, mode="transductive")
    thalf = wnll_interpolate(q[:5], ts, mode="transductive")
    assert (tfull[:5] - thalf).abs().max() > 1e-4       # batch-mates matter in the paper's mode


def _knn_noise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 1) bound on how far two float kernels' squared distances from a row of ``a`` may differ.

    knn computes d² = |x|² + |y|² - 2 x·y. A length-D dot product in any summation order is within
    γ_D Σ|x_i y_i| <= γ_D |x||y| of the exact value (γ_D ≈ D u, u the unit roundoff); so are the
    squared norms, and the two additions and the square root add a few u of |x|² + |y|² each. Two
    kernels (two chunkings, batch sizes, thread counts) are each within (2 D + 8) u (|x|² + |y|²) of
    the exact d², hence within (4 D + 16) u (|x|² + |y|²) of each other (2|x||y| <= |x|² + |y|²).
    """
    u = torch.finfo(a.dtype).eps / 2
    return (4 * a.shape[1] + 16) * u * ((a * a).sum(1, keepdim=True) + (b * b).sum(1).max())


def test_knn_chunking_is_exact():
    # Chunks of 3 rows and one chunk of 50 run different GEMM kernels: the distances agree within
    # the float noise of d² (_knn_noise), and the neighbour lists are the same except where two
    # candidates' exact distances are tied within that noise (either order is then a correct answer).
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 4, generator=g), torch.randn(70, 4, generator=g)
    d1, i1 = knn(a, b, 5)
    d2, i2 = knn(a, b, 5, chunk_elements=70 * 3)       # 3 rows at a time
    tau = _knn_noise(a, b)
    assert ((d1 ** 2 - d2 ** 2).abs() <= tau).all()
    exact = torch.cdist(a.double(), b.double()) ** 2    # float64: its own error is ~1e-9 of tau
    for d, i in ((d1, i1), (d2, i2)):                   # each list names points at the distances it reports
        assert ((exact.gather(1, i).float() - d ** 2).abs() <= tau).all()
    swapped = i1 != i2
    assert ((exact.gather(1, i1) - exact.gather(1, i2)).abs()[swapped] <= 2 * tau.expand_as(i1)[swapped]).all()
    d3, i3 = knn(b, b, 3, exclude_self=True, chunk_elements=70 * 4)
    assert not (i3 == torch.arange(70)[:, None]).any()
    ref = torch.cdist(b, b).fill_diagonal_(float("inf")).topk(3, largest=False)
    torch.testing.assert_close(d3, ref.values)


def test_gradient_flows_to_queries():
    feats, labels = clusters(10, 2, 4, 5, spread=2.0)
    ts = TemplateSet(feats, labels)
    # queries between the classes, where both labels reach them (deep inside one class u is constant)
    between = 0.5 * (feats[:3] + feats[10:13])
    for mode in ("inductive", "transductive"):
        q = between.clone().requires_grad_(True)
        u = wnll_interpolate(q, ts, k=5, k_sigma=3, mode=mode)
        u[:, 0].sum().backward()
        assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
        # and it is the right gradient: a finite-difference check in float64
        assert torch.autograd.gradcheck(lambda z: wnll_interpolate(z, ts, k=5, k_sigma=3, mode=mode),
                                        (between.clone().requires_grad_(True),), eps=1e-7, atol=1e-5)


class TestBadInput:
    def setup_method(self):
        self.ts = TemplateSet(torch.randn(20, 4), torch.arange(20) % 2)

    def test_dimension_mismatch(self):
        with pytest.raises(ShapeError, match="same feature extractor"):
            wnll_interpolate(torch.randn(2, 5), self.ts)

    def test_empty_templates(self):
        with pytest.raises(WNLLError, match="empty"):
            TemplateSet(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))

    def test_labels_out_of_range(self):
        with pytest.raises(WNLLError, match="0..1"):
            TemplateSet(torch.randn(4, 2), torch.tensor([0, 1, 2, 1]), {"num_classes": 2})
        with pytest.raises(WNLLError, match="labels must lie"):
            TemplateSet(torch.randn(4, 2), torch.tensor([0, -1, 1, 1]))

    def test_k_too_large(self):
        with pytest.raises(WNLLError, match=r"k = 20 needs at least k \+ 1 = 21"):
            wnll_interpolate(torch.randn(2, 4), self.ts, k=20, k_sigma=8)
        with pytest.raises(RangeError, match="k_sigma"):
            wnll_interpolate(torch.randn(2, 4), self.ts, k=5, k_sigma=8)

    def test_nan_features(self):
        q = torch.randn(3, 4)
        q[1, 2] = float("nan")
        with pytest.raises(WNLLError, match=r"queries \[1\]"):
            wnll_interpolate(q, self.ts)
        with pytest.raises(WNLLError, match="NaN"):
            TemplateSet(torch.full((3, 2), float("nan")), torch.tensor([0, 1, 0]))

    def test_wrong_types(self):
        with pytest.raises(DTypeError):
            wnll_interpolate(torch.randn(2, 4), (torch.randn(5, 4), torch.zeros(5)))
        with pytest.raises(DTypeError):
            TemplateSet(torch.randn(4, 2), torch.tensor([0.0, 1.0, 0.0, 1.0]))


class TestArtifacts:
    def test_template_set_round_trip_and_checksum(self, tmp_path):
        ts = TemplateSet(torch.randn(12, 3), torch.arange(12) % 3, {"class_names": ["a", "b", "c"]})
        json_path = ts.save(tmp_path / "tmpl")
        back = TemplateSet.load(tmp_path / "tmpl")
        assert torch.equal(back.features, ts.features) and torch.equal(back.labels, ts.labels)
        assert back.meta["class_names"] == ["a", "b", "c"] and json_path.suffix == ".json"
        st = tmp_path / "tmpl.safetensors"
        data = bytearray(st.read_bytes())
        data[-1] ^= 1
        st.write_bytes(bytes(data))
        with pytest.raises(ChecksumError, match="sha256"):
            TemplateSet.load(tmp_path / "tmpl.json")

    def test_head_round_trip(self, tmp_path):
        torch.manual_seed(0)
        buffer = make_buffer(6, 4)
        feats = torch.randn(30, 6)
        ts = TemplateSet(buffer(feats).detach(), torch.arange(30) % 3)
        head = WNLLHead(ts, buffer=buffer, k=5, k_sigma=3)
        head.save(tmp_path / "head", training={"command": "test"})
        back = WNLLHead.load(tmp_path / "head")
        q = torch.randn(4, 6)
        torch.testing.assert_close(back(q), head(q))
        assert back.meta["training"] == {"command": "test"} and back.mode == "inductive"
        assert WNLLHead.load(tmp_path / "head", mode="transductive").mode == "transductive"

    def test_build_per_class(self):
        images = torch.rand(30, 3, 4, 4)
        labels = torch.arange(30) % 3
        ts = TemplateSet.build(lambda x: x.mean((2, 3)), images, labels, per_class=4,
                               generator=torch.Generator().manual_seed(1))
        assert len(ts) == 12 and torch.bincount(ts.labels).tolist() == [4, 4, 4]
        idx = torch.tensor(ts.meta["indices"])
        torch.testing.assert_close(ts.features, images[idx].mean((2, 3)))
        with pytest.raises(WNLLError, match="fewer than per_class"):
            TemplateSet.build(lambda x: x.mean((2, 3)), images, labels, per_class=11)


def test_scores_are_probabilities_and_separated_clusters_are_recovered():
    feats, labels = clusters(30, 4, 8, 11, spread=0.5)
    q, qy = clusters(10, 4, 8, 11, spread=0.5)    # same centers (same seed), fresh noise would be better:
    q = q + 0.1 * torch.randn(q.shape, generator=torch.Generator().manual_seed(2), dtype=q.dtype)
    ts = TemplateSet(feats, labels)
    for mode in ("inductive", "transductive"):
        u = wnll_interpolate(q, ts, mode=mode)
        assert (u >= -1e-12).all() and (u <= 1 + 1e-12).all()
        torch.testing.assert_close(u.sum(1), torch.ones(len(q), dtype=u.dtype))
        assert (u.argmax(1) == qy).float().mean() == 1.0
    assert math.isclose(float(WNLLHead(ts).log_scores(q).exp().sum(1).mean()), 1.0, rel_tol=1e-9)


class _Featured(torch.nn.Module):
    """A toy classifier with a features() method, like purify's models."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 6))
        self.linear = torch.nn.Linear(6, 3)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.linear(self.features(x))


def test_defended_classifier_with_head():
    from purify.pipeline import DefendedClassifier, Pipeline

    torch.manual_seed(0)
    clf = _Featured()
    images = torch.rand(30, 3, 4, 4)
    ts = TemplateSet.build(clf.features, images, torch.arange(30) % 3)
    head = WNLLHead(ts, k=5, k_sigma=3)
    x = torch.rand(4, 3, 4, 4)
    out = DefendedClassifier(None, clf, head=head)(x)
    torch.testing.assert_close(out.exp(), head(clf.features(x)))       # log-scores of the interpolation
    defended = DefendedClassifier(Pipeline.from_spec(("dct", {"q": 10})), clf, head=head)(x)
    assert defended.shape == (4, 3)
    with pytest.raises(DTypeError, match="has no features"):
        DefendedClassifier(None, torch.nn.Sequential(torch.nn.Flatten()), head=head)
    with pytest.raises(DTypeError, match="Pipeline or None"):
        DefendedClassifier(42, clf)


def test_transductive_queries_cut_off_from_the_templates_fall_back_to_inductive():
    # templates near 0, a tight query cluster far away: with k = 2 every query's neighbours are queries
    # and no template reaches them, so the harmonic extension is undefined there.
    ts = TemplateSet(torch.tensor([[0.0], [0.5], [1.0], [1.5]], dtype=torch.float64), torch.tensor([0, 0, 1, 1]))
    q = torch.tensor([[100.0], [100.1], [100.2]], dtype=torch.float64)
    u = wnll_interpolate(q, ts, k=2, k_sigma=1, mode="transductive")
    torch.testing.assert_close(u, wnll_interpolate(q, ts, k=2, k_sigma=1, mode="inductive"))
    torch.testing.assert_close(u.sum(1), torch.ones(3, dtype=torch.float64))


class TestHeadState:
    """A head's scores depend only on its current buffers: no cache outlives load_state_dict, .to() or an edit."""

    @staticmethod
    def _head(seed: int, mode: str) -> WNLLHead:
        torch.manual_seed(seed)
        feats, labels = clusters(12, 3, 4, seed, spread=2.0)
        perm = torch.randperm(len(labels))              # another head's labels sit at other rows
        return WNLLHead(TemplateSet(feats[perm].float(), labels[perm]), buffer=make_buffer(5, 4), k=5,
                        k_sigma=3, mode=mode)

    @staticmethod
    def _fresh(head: WNLLHead) -> WNLLHead:
        """A head built from scratch from ``head``'s current state (no caches shared)."""
        buffer = make_buffer(5, 4).to(head.template_features.dtype)
        buffer.load_state_dict(head.buffer.state_dict())
        ts = TemplateSet(head.template_features.clone(), head.template_labels.clone(), head.template_meta)
        return WNLLHead(ts, buffer=buffer, k=head.k, k_sigma=head.k_sigma, mode=head.mode)

    @pytest.mark.parametrize("mode", ["inductive", "transductive"])
    def test_load_state_dict(self, mode):
        a, b = self._head(0, mode), self._head(1, mode)
        q = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
        before = a(q)                                   # fills a's template and neighbour caches
        assert (before - b(q)).abs().max() > 0.05       # the heads differ, so a stale cache would show
        a.load_state_dict(b.state_dict())
        # the same computation on the same data in one process: any difference is a stale cache
        assert torch.equal(a(q), self._fresh(b)(q)) and torch.equal(a(q), b(q))

    @pytest.mark.parametrize("mode", ["inductive", "transductive"])
    @pytest.mark.parametrize("edit", ["mul_", "copy_", "data", "swap_tensors", "labels"])
    def test_in_place_edits(self, mode, edit):
        head = self._head(0, mode)
        q = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():                           # a graph would hold feats: swap_tensors refuses that
            before = head(q)
        feats, other = head.template_features, self._head(1, mode)
        if edit == "mul_":
            feats.mul_(torch.linspace(0.2, 3.0, len(feats))[:, None])
        elif edit == "copy_":
            feats.copy_(other.template_features)
        elif edit == "data":
            feats.data = other.template_features.clone()  # no version bump: the storage changes
        elif edit == "swap_tensors":
            torch.utils.swap_tensors(feats, other.template_features.clone())
        else:
            head.template_labels.copy_(other.template_labels)
        after = head(q)
        assert (after - before).abs().max() > 0.05
        assert torch.equal(after, self._fresh(head)(q))

    @pytest.mark.parametrize("mode", ["inductive", "transductive"])
    def test_to_dtype(self, mode):
        head = self._head(0, mode)
        q = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
        head(q)
        head.double()
        assert head.templates.features.dtype == torch.float64
        assert torch.equal(head(q.double()), self._fresh(head)(q.double()))

    def test_template_set_neighbours_follow_features(self):
        feats, labels = clusters(10, 2, 3, 0)
        ts = TemplateSet(feats, labels)
        ts.neighbours(4)
        ts.features.mul_(torch.linspace(0.2, 3.0, len(feats), dtype=feats.dtype)[:, None])
        d, i = ts.neighbours(4)
        ref_d, ref_i = knn(ts.features, ts.features, 4, exclude_self=True)
        assert torch.equal(d, ref_d) and torch.equal(i, ref_i)
        ts.features = feats.flip(0).clone()             # a new tensor, possibly at the old address
        assert torch.equal(ts.neighbours(4)[1], knn(ts.features, ts.features, 4, exclude_self=True)[1])

    def test_cache_is_reused_while_nothing_changes(self):
        head = self._head(0, "inductive")
        assert head.templates is head.templates
        ts = head.templates
        assert ts.neighbours(5)[0] is ts.neighbours(5)[0]
