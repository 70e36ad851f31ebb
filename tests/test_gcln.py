"""The generative cleaning network: architecture, straight-through quantization, artifact, training recipe.

Everything here runs on random tensors and tiny networks (no data directory, no downloads).
Golden outputs of the shipped generator come with its weights.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from purify import (ChecksumError, DataNotFoundError, DTypeError, NonDifferentiableError, Pipeline, PurifyError,
                    RangeError, ShapeError, UnknownNameError, get_purifier_spec, purify)
from purify.dct import block_dct2d, block_idct2d, dct_quantize
from purify.gcln import (GCLN, AttackDetector, CleaningGenerator, count_flops, count_parameters, gcln_purify,
                         load_generator, save_generator)
from purify.training import gcln as training


def _randomized(seed: int = 0, **kw) -> CleaningGenerator:
    """A generator whose zero-initialized output convolutions are random too (an untrained G is the quantizer)."""
    torch.manual_seed(seed)
    g = CleaningGenerator(**kw)
    with torch.no_grad():
        for conv in (g.stem[-1], g.tail):
            conv.weight.normal_(0, 0.05)
            conv.bias.normal_(0, 0.01)
    return g.eval()


# ----------------------------------------------------------------------------- architecture

@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (3, 3, 64, 48), (1, 3, 37, 31), (0, 3, 32, 32)])
def test_smoke_fully_convolutional(shape):
    g = _randomized(width=16, blocks=2)
    x = torch.rand(shape)
    out = g(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    if x.numel():
        assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out, dct_quantize(x, q=10.0))
    d = AttackDetector(width=8)(x)
    assert d.shape == (shape[0],)


def test_untrained_generator_is_the_quantizer():
    x = torch.rand(2, 3, 40, 24)
    assert torch.equal(CleaningGenerator(q=5.0, width=8, blocks=1)(x), dct_quantize(x, q=5.0))


# Where two kernels may round differently. The stem's float32 convolutions (27 and 288 terms) give
# the quantizer's input within ~1e-6 on different kernels (batch sizes, CPUs; measured: the golden
# outputs made on another machine agree to 2.4e-7), so a DCT coefficient (64 terms, weights of
# absolute sum <= 8) within STEM_NOISE = 1e-5 of a rounding boundary may land on either side. Such a
# flip changes its 8x8 block by one step; the restoration network (10 layers of 3x3 convolutions)
# spreads it by at most 10 pixels. Everywhere else the outputs agree to float noise.
STEM_NOISE = 1e-5
RESTORE_RADIUS = 10


def _tied_pixels(g, x: torch.Tensor, q: float | None = None) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels a rounding flip of the inner quantizer could reach (see STEM_NOISE)."""
    from purify.dct import _coefficients, _step

    with torch.no_grad():
        coeffs, _ = _coefficients(g.quantizer_input(x), g.block_size)
        step = _step(g.q if q is None else q, coeffs)
        scaled = coeffs * 255.0 / step
        margin = ((scaled - torch.floor(scaled)) - 0.5).abs() * step / 255.0
        near = (margin < STEM_NOISE).any(1, keepdim=True).float()
        blocks = F.max_pool2d(near, g.block_size)
        pixels = F.interpolate(blocks, scale_factor=g.block_size)[..., :x.shape[2], :x.shape[3]]
        return F.max_pool2d(pixels, 2 * RESTORE_RADIUS + 1, stride=1, padding=RESTORE_RADIUS) > 0


def _assert_close_off_ties(got: torch.Tensor, expected: torch.Tensor, tied: torch.Tensor, *, atol: float,
                           max_tied: float = 0.5) -> None:
    """Equal within ``atol`` wherever no rounding flip can reach; at least ``1 - max_tied`` of it is compared."""
    assert tied.float().mean() < max_tied, float(tied.float().mean())
    keep = ~tied.expand_as(got)
    torch.testing.assert_close(got[keep], expected[keep], atol=atol, rtol=0)


def test_batch_consistent():
    g = _randomized(width=8, blocks=1)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _assert_close_off_ties(g(x)[1:2], g(x[1:2]), _tied_pixels(g, x[1:2]), atol=1e-5)


def test_stated_cost_matches_the_counters():
    g = CleaningGenerator()
    params, flops = count_parameters(g), count_flops(g)
    assert f"{params:,} parameters" in CleaningGenerator.__doc__
    assert f"{flops / 1e6:.1f} MFLOPs" in CleaningGenerator.__doc__
    # conv FLOPs by hand for one layer of the restoration network, 32x32: 2 * 1024 * 48 * 48 * 9
    one = nn.Conv2d(48, 48, 3, padding=1)
    assert count_flops(one, (48, 32, 32)) == 2 * 1024 * 48 * 48 * 9


# ----------------------------------------------------------------------------- straight-through quantization

def _ste_reference(z: torch.Tensor, *, q: float, block_size: int, ste: bool) -> torch.Tensor:
    """Rounding in the forward pass, identity in the backward pass (the clip keeps its own gradient)."""
    scale = 255.0 / q
    rounded = block_idct2d(torch.round(block_dct2d(z.detach(), block_size=block_size) * scale) / scale,
                           block_size=block_size)
    return (z + (rounded - z).detach()).clamp(0.0, 1.0)


def test_gradcheck_ste_equals_identity_rounding(monkeypatch):
    g = _randomized(width=8, blocks=1).double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    w = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def grads():
        g.zero_grad()
        xg = x.clone().requires_grad_()
        (g(xg, ste=True) * w).sum().backward()
        return xg.grad, g.stem[0].weight.grad.clone()

    gx, gw = grads()
    monkeypatch.setattr("purify.gcln._dct_core", _ste_reference)
    rx, rw = grads()
    assert gx.abs().sum() > 0 and gw.abs().sum() > 0        # the gradient reaches the stem in front of the quantizer
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_exception_backward_without_ste():
    g = _randomized(width=8, blocks=1)
    xg = torch.rand(1, 3, 16, 16, requires_grad=True)
    with pytest.raises(NonDifferentiableError, match="ste=True"):
        g(xg).sum().backward()


# ----------------------------------------------------------------------------- artifact and purifier

@pytest.fixture
def artifact(tmp_path):
    g = _randomized(width=8, blocks=1, q=8.0)
    path = save_generator(tmp_path / "gen", g, {"training": {"command": "test"}})
    return g, path


def test_module_and_function_agree_with_the_saved_generator(artifact):
    g, path = artifact
    x = torch.rand(2, 3, 32, 32)
    expected = g(x)
    torch.testing.assert_close(gcln_purify(x, weights=path), expected)
    torch.testing.assert_close(GCLN(weights=str(path))(x), expected)
    torch.testing.assert_close(purify(x, "gcln", weights=str(path)), expected)
    assert json.loads(path.read_text())["q"] == 8.0 and load_generator(path).artifact["q"] == 8.0
    assert load_generator(path) is load_generator(path.with_suffix(""))            # cached per file and device
    torch.testing.assert_close(gcln_purify(x, weights=path, q=20.0), g(x, q=20.0))  # q override


def test_pipeline_with_tvm_in_front(artifact):
    _, path = artifact
    pipe = Pipeline.from_spec(["tvm", ("gcln", {"weights": str(path)})])
    assert pipe.names == ["tvm", "gcln"] and not pipe.differentiable
    assert Pipeline.from_spec([("gcln", {"weights": str(path), "ste": True})]).differentiable
    out = pipe(torch.rand(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32)


def test_purifier_gradient_modes(artifact):
    _, path = artifact
    xg = torch.rand(2, 3, 32, 32, requires_grad=True)
    gcln_purify(xg, weights=path, ste=True).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    with pytest.raises(NonDifferentiableError):
        gcln_purify(xg, weights=path).sum().backward()


def test_exception_checksum_on_tampered_file(tmp_path):
    path = save_generator(tmp_path / "t", _randomized(width=8, blocks=1), {})
    st = path.with_suffix(".safetensors")
    data = bytearray(st.read_bytes())
    data[-1] ^= 0xFF
    st.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        gcln_purify(torch.rand(1, 3, 8, 8), weights=path)


def test_exception_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"python -m purify\.training\.gcln"):
        gcln_purify(torch.rand(1, 3, 8, 8), weights=tmp_path / "absent")
    with pytest.raises(DataNotFoundError, match="shipped generators"):
        gcln_purify(torch.rand(1, 3, 8, 8), weights="gcln_no_such_name")


def test_registry_entry():
    spec = get_purifier_spec("gcln")
    assert spec.params == ("weights", "ste", "q") and not spec.differentiable and not spec.randomized
    twin = {k: v.default for k, v in inspect.signature(GCLN.__init__).parameters.items() if v.kind == v.KEYWORD_ONLY}
    assert twin == spec.defaults()


# ----------------------------------------------------------------------------- the twin owns its generator

def test_module_owns_its_generator(artifact, tmp_path):
    g, path = artifact
    m = GCLN(weights=path)
    assert m.weights == path and m.net is not load_generator(path)          # its own copy, not the shared cache
    assert m.q == 8.0 and GCLN(weights=path, q=5.0).q == 5.0                 # the effective step
    assert count_parameters(m) == count_parameters(g) and not any(p.requires_grad for p in m.parameters())
    assert set(m.state_dict()) == {f"net.{k}" for k in g.state_dict()}
    for name, t in g.state_dict().items():
        assert torch.equal(m.state_dict()[f"net.{name}"], t)
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        m.net.tail.bias.add_(0.1)                                            # edits reach m, not the cache
    assert not torch.allclose(m(x), g(x)) and torch.equal(gcln_purify(x, weights=path), g(x))


def test_module_load_state_dict_round_trip(artifact, tmp_path):
    g, path = artifact
    other_path = save_generator(tmp_path / "other", _randomized(seed=5, width=8, blocks=1, q=8.0), {})
    a, b = GCLN(weights=path), GCLN(weights=other_path)
    x = torch.rand(3, 3, 32, 32)
    out_a, out_b = a(x), b(x)
    assert not torch.allclose(out_a, out_b)
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(x), out_b)                                          # same weights, same kernels
    a.load_state_dict(GCLN(weights=path).state_dict())
    assert torch.equal(a(x), out_a)


def test_module_to_moves_the_generator(artifact, device):
    g, path = artifact
    m = GCLN(weights=path, q=torch.tensor([6.0, 9.0])).to(device)
    assert all(p.device.type == device.type for p in m.parameters()) and m.q.device.type == device.type
    assert "q" not in m.state_dict()                                         # a hyper-parameter, not a weight
    x = torch.rand(2, 3, 32, 32)
    out = m(x.to(device))
    assert out.device.type == device.type
    # cpu vs. another device: conv kernels differ in float noise, which may flip a rounding step
    # in a few coefficients; compare where the rounding is well defined (most pixels).
    close = (out.cpu() - g(x, q=torch.tensor([6.0, 9.0]))).abs() <= 1e-5
    assert close.float().mean() > 0.99
    m64 = GCLN(weights=path).double()
    assert m64.net.head.weight.dtype == torch.float64 and m64(x).dtype == torch.float32
    torch.testing.assert_close(m64(x.double()), g.double()(x.double()))


def test_run_equals_forward_and_takes_overrides(artifact):
    g, path = artifact
    m = GCLN(weights=path)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m.run(x), m(x)) and torch.equal(m.run(x, generator=torch.Generator().manual_seed(1)), m(x))
    torch.testing.assert_close(m.run(x, q=20.0), g(x, q=20.0))
    q = torch.tensor([10.0, 14.0, 20.0])
    per_image = m.run(x, q=q)
    for i in range(3):   # one image against the batch: two kernels, compared off rounding ties
        alone = g(x[i:i + 1], q=float(q[i]))
        # Noise images put many coefficients near a boundary: a smaller part of them is compared.
        _assert_close_off_ties(per_image[i:i + 1], alone, _tied_pixels(g, x[i:i + 1], float(q[i])), atol=1e-5,
                               max_tied=0.9)
    assert torch.equal(GCLN(weights=path, q=q).run(x), per_image) and torch.equal(GCLN(weights=path, q=q)(x), per_image)
    xg = x.clone().requires_grad_()
    m.run(xg, ste=True).sum().backward()
    assert xg.grad.abs().sum() > 0
    with pytest.raises(NonDifferentiableError):
        m.run(x.clone().requires_grad_()).sum().backward()
    with pytest.raises(UnknownNameError, match="'q', 'ste'"):
        m.run(x, weights="gcln_cifar10")
    with pytest.raises(UnknownNameError, match="'qq'"):
        m.run(x, qq=3.0)


def test_rounding_margin_is_the_inner_quantizers():
    from purify.dct import rounding_margin

    x = torch.rand(3, 3, 24, 16)
    untrained = GCLN(weights=CleaningGenerator(q=6.0, width=8, blocks=1))    # its stem is the identity
    torch.testing.assert_close(untrained.rounding_margin(x), rounding_margin(x, q=6.0))
    q = torch.tensor([3.0, 7.0, 11.0])
    torch.testing.assert_close(untrained.rounding_margin(x, q=q, ste=True), rounding_margin(x, q=q))
    g = _randomized(width=8, blocks=1, q=8.0)
    margin = GCLN(weights=g).rounding_margin(x)
    assert margin.shape == (3,) and (margin >= 0).all() and (margin <= 0.5).all()
    torch.testing.assert_close(margin, rounding_margin(g.quantizer_input(x), q=8.0))
    assert not torch.allclose(margin, rounding_margin(x, q=8.0))              # the stem's output, not x
    with pytest.raises(UnknownNameError, match="GCLN.rounding_margin"):
        untrained.rounding_margin(x, block_size=4)


def test_function_and_module_take_a_generator_instance(artifact):
    g, _ = artifact
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(gcln_purify(x, weights=g), g(x))
    m = GCLN(weights=g)
    assert m.net is g and m.weights is None and torch.equal(m(x), g(x))
    assert torch.equal(gcln_purify(x.double(), weights=g), g(x).double())   # computed in g's dtype, cast back


def test_exception_checked_once_at_the_boundary(artifact):
    g, path = artifact
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(DTypeError, match="ste"):
        GCLN(weights=path, ste=1)
    with pytest.raises(RangeError, match="q"):
        GCLN(weights=path, q=-1.0)
    with pytest.raises(ShapeError, match="one value per image"):
        GCLN(weights=path, q=torch.ones(2, 2))
    with pytest.raises(DTypeError, match="CleaningGenerator"):
        GCLN(weights=3)
    with pytest.raises(DTypeError, match="CleaningGenerator"):
        gcln_purify(x, weights=nn.Linear(2, 2))
    with pytest.raises(RangeError, match="q"):
        gcln_purify(x, weights=g, q=torch.tensor([1.0, 0.0]))
    with pytest.raises(ShapeError, match="q"):
        gcln_purify(x, weights=g, q=torch.ones(3))
    with pytest.raises(ShapeError, match="3 channels"):
        GCLN(weights=path)(torch.rand(1, 1, 8, 8))
    with pytest.raises(RangeError, match=r"\[0, 1\]"):
        GCLN(weights=path)(x + 1)
    if torch.cuda.is_available():
        with pytest.raises(DTypeError, match="GCLN"):
            gcln_purify(x.cuda(), weights=g)


def test_run_traces_to_onnx(artifact, tmp_path):
    """GCLN.run reads no file, so it exports as it is: the graph matches run at other batch sizes."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import warnings

    _, path = artifact
    m = GCLN(weights=path).eval()

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stage = m

        def forward(self, x):
            return self.stage.run(x)

    out = tmp_path / "gcln.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # the dct stage's range check becomes a constant while tracing
        torch.onnx.export(Graph(), (torch.rand(2, 3, 16, 16),), str(out), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        x = torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(b))
        got = torch.from_numpy(session.run(["y"], {"x": x.numpy()})[0])
        # onnxruntime's convolutions differ from torch's by float noise (~1e-6), which can flip a
        # coefficient lying at a rounding boundary; such a flip moves its 8x8 block by up to
        # q/255/8 ~ 4e-3. Require agreement to 1e-4 almost everywhere and bounded everywhere.
        diff = (got - m.run(x)).abs()
        assert float((diff <= 1e-4).float().mean()) > 0.98 and float(diff.max()) < 0.05


# ----------------------------------------------------------------------------- training recipe

def _tiny_classifier() -> nn.Module:
    """Always predicts class 0 (zero weights, biased head), so every G output counts as correctly classified."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[4].weight.zero_()
        net[4].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    return net.eval()


def _split(n: int, seed: int) -> training.Split:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    noise = torch.randint(-8, 9, clean.shape, generator=g)
    return training.Split(clean, (clean.long() + noise).clamp(0, 255).to(torch.uint8), torch.zeros(n, dtype=torch.long))


def _train(tmp_path, epochs, *, resume=False, **kw):
    torch.manual_seed(0)
    g, d = CleaningGenerator(width=8, stem_width=8, blocks=1), AttackDetector(width=4)
    hist = training.train_gcln(g, d, _tiny_classifier(), _split(16, 0), _split(8, 1), epochs=epochs, batch_size=8,
                               layer="0", d_warmup=1, checkpoint=tmp_path / "ck.pt", resume=resume, progress=False,
                               **kw)
    return g, hist


def test_training_losses_finite_and_resume_follows_the_same_path(tmp_path):
    g_full, hist = _train(tmp_path / "a", 2, feedback=True, pool_size=16)
    assert [h["epoch"] for h in hist] == [1, 2]
    for key in ("loss_d", "loss_g", "loss_p", "loss_a", "val_attacked", "val_clean"):
        assert all(torch.isfinite(torch.tensor(h[key])) for h in hist), key
    assert hist[1]["val_clean"] == 1.0                      # the tiny classifier always answers the true class
    ck = torch.load(tmp_path / "a" / "ck.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["pool_count"] == 2 * 8 * 3   # 3 G steps after 1 warm-up step, all correct
    _train(tmp_path / "b", 1, feedback=True, pool_size=16)
    g_resumed, hist_b = _train(tmp_path / "b", 2, resume=True, feedback=True, pool_size=16)
    assert [h["epoch"] for h in hist_b] == [1, 2]
    torch.testing.assert_close(g_resumed.state_dict(), g_full.state_dict())       # the best epoch's weights
    last_a = torch.load(tmp_path / "a" / "ck.pt", weights_only=True)
    last_b = torch.load(tmp_path / "b" / "ck.pt", weights_only=True)
    for part in ("generator", "detector"):                                        # the last epoch's, bit for bit
        for name, a in last_a[part].items():
            assert torch.equal(a, last_b[part][name]), (part, name)


def test_exception_resume_with_other_settings(tmp_path):
    _train(tmp_path, 1)
    with pytest.raises(PurifyError, match="lam"):
        _train(tmp_path, 2, resume=True, lam=0.9)


def test_exception_unknown_perceptual_layer():
    with pytest.raises(UnknownNameError, match="'logits', '0'"):
        training.FeatureTap(_tiny_classifier(), "layer9")


def test_init_from_copies_weights_and_refuses_other_architectures(tmp_path):
    source = _randomized(width=8, blocks=1, q=10.0)
    path = save_generator(tmp_path / "src", source, {})
    target = CleaningGenerator(width=8, blocks=1, q=5.0)
    record = training._init_from(target, str(path))
    torch.testing.assert_close(target.state_dict(), source.state_dict())
    assert target.q == 5.0                                          # q is the run's, not the source's
    assert record["q"] == 10.0 and record["sha256"] == json.loads(path.read_text())["sha256"]
    with pytest.raises(PurifyError, match="architecture"):
        training._init_from(CleaningGenerator(width=16, blocks=1), str(path))


class _Counted(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_attack_cache_keyed_and_resumable(tmp_path):
    torch.manual_seed(2)
    clf = _Counted(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)))
    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (10,))
    settings = (training.AttackSetting("fgsm", 4), training.AttackSetting("pgd", 8, 3, 0.25, True))
    run = lambda model=clf, s=settings, data=x: training.cached_attacks(  # noqa: E731
        model, data, y, settings=s, cache_dir=tmp_path, chunk_size=4, progress=False)
    adv = run()
    delta = (adv.long() - x.long()).abs().amax(dim=(1, 2, 3))
    assert (delta[0::2] <= 4).all() and (delta[1::2] <= 8).all() and (delta[1::2] > 4).any()
    calls = clf.calls
    assert torch.equal(run(), adv) and clf.calls == calls           # a second call reads the cache
    folders = {p.name for p in tmp_path.iterdir()}
    assert len(folders) == 1
    (tmp_path / folders.pop() / "chunk_00001.pt").unlink()          # an interrupted run: one chunk missing
    assert torch.equal(run(), adv) and clf.calls > calls             # remade, identically (seeded per chunk)
    run(s=settings[:1])
    run(data=x.flip(0))
    with torch.no_grad():
        clf.net[1].bias.add_(1.0)
    run()
    assert len(list(tmp_path.iterdir())) == 4                        # settings, data and weights each key a new cache


# ----------------------------------------------------------------------------- the shipped generator

def test_shipped_generator_golden_outputs():
    import numpy as np

    from tests.golden.make_gcln_golden import GOLDEN, golden_inputs

    gold = np.load(GOLDEN)
    g = load_generator("gcln_cifar10")
    assert g.artifact["sha256"] == str(gold["sha256"]), \
        "purify/weights/gcln_cifar10 changed; if on purpose, run `python -m tests.golden.make_gcln_golden`"
    np.testing.assert_array_equal(gold["inputs"], golden_inputs())
    x = torch.from_numpy(gold["inputs"])
    expected = torch.from_numpy(gold["outputs"])
    # Made on another machine: compared where no rounding flip of the inner quantizer can reach.
    tied = _tied_pixels(g, x)
    _assert_close_off_ties(g(x), expected, tied, atol=2e-5)
    _assert_close_off_ties(purify(x, method="gcln"), expected, tied, atol=2e-5)
    twin = GCLN()
    assert twin.net.artifact["sha256"] == str(gold["sha256"])
    _assert_close_off_ties(twin(x), expected, tied, atol=2e-5)
    _assert_close_off_ties(twin.run(x), expected, tied, atol=2e-5)
    assert not torch.allclose(expected, dct_quantize(x, q=g.q), atol=1e-3)     # trained: more than the quantizer


def test_shipped_generator_keeps_clean_accuracy(data_dir):
    """On 200 test images the pretrained ResNet-56 loses at most 5 points behind G (the artifact records ~1-2)."""
    from purify.data import load_dataset
    from purify.models import create_model

    x, y = load_dataset("cifar10", "test", data_dir=data_dir).tensors(list(range(200)))
    model = create_model("resnet56", pretrained=True, data_dir=data_dir).eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
        cleaned = (model(purify(x, method="gcln")).argmax(1) == y).float().mean()
    assert cleaned >= clean - 0.05, (float(clean), float(cleaned))
