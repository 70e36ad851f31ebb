"""Activations that defend a trained ReLU network, and ``retrofit`` to swap them in without retraining.

=========================  ======================================  ============================
function / module          value                                   paper
=========================  ======================================  ============================
``jump_relu``              ``z · H(z − κ)``: 0 for z ≤ κ, else z   JumpReLU (Erichson et al.)
``JumpReLU(kappa)``        the same, κ fixed
``RandomJumpReLU(lo, hi)`` κ drawn uniformly in [lo, hi] per call  JumpReLU §5 (randomized)
``bounded_relu``           ``min(max(z, 0), t)``                   bounded ReLU (Zantedeschi)
``BoundedReLU(t)``         the same, t fixed
=========================  ======================================  ============================

JumpReLU's exact gradient is the ReLU's gradient with the units at or below κ switched off, and its
value jumps at κ, which masks gradients: an attacker who knows it differentiates through ReLU
instead (BPDA, Athalye et al. 2018). ``backward="relu"`` gives that surrogate: the JumpReLU value
forward, the ReLU gradient backward. :meth:`Retrofitted.relu_backward` switches a whole
retrofitted network to it for the duration of a ``with`` block.

:func:`retrofit` returns a copy of a trained network with every ReLU replaced: ``nn.ReLU``
modules are swapped for the new module, and functional calls (``F.relu``, ``torch.relu``,
``Tensor.relu``, their in-place forms; the shipped ResNets and LeNet use them) are redirected
while the copy runs, by a :class:`torch.overrides.TorchFunctionMode`. A mode rather than a
``torch.fx`` graph rewrite, because a graph keeps only ``forward``: the shipped models'
``features`` (used by the WNLL head) and a user's own methods would fall back to plain ReLU.

Example:
    >>> import torch
    >>> from purify.activations import jump_relu, retrofit
    >>> jump_relu(torch.tensor([-1.0, 0.2, 0.5, 2.0]), 0.5)
    tensor([0., 0., 0., 2.])
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> jumpy = retrofit(net, "jumprelu", kappa=0.1)
    >>> jumpy(torch.rand(3, 4)).shape, type(net[1]).__name__     # the original is untouched
    (torch.Size([3, 2]), 'ReLU')
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from purify._checks import check_choice, check_float
from purify.errors import DTypeError, RetrofitError

__all__ = ["jump_relu", "bounded_relu", "JumpReLU", "RandomJumpReLU", "BoundedReLU", "Retrofitted", "retrofit",
           "ACTIVATIONS", "make_activation"]

_BACKWARDS = ("exact", "relu")


def _check_tensor(fn: str, z: object) -> Tensor:
    if not isinstance(z, Tensor):
        raise DTypeError(f"{fn}: expected a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise DTypeError(f"{fn}: expected a floating tensor, got {z.dtype}")
    return z


def jump_relu(z: Tensor, kappa: float | Tensor, *, backward: str = "exact") -> Tensor:
    """JumpReLU, ``z · H(z − κ)``: zero at and below ``kappa``, the identity above it.

    Args:
        z: any floating tensor.
        kappa: the jump, >= 0 (0 is ReLU); a float or a 0-d tensor.
        backward: ``"exact"`` (autograd of the value: ReLU's gradient with the units <= κ switched
            off) or ``"relu"`` (BPDA: ReLU's gradient, the value unchanged).

    Shape:
        output: the shape of ``z``.

    Example:
        >>> jump_relu(torch.tensor([0.1, 0.3]), 0.2)
        tensor([0.0000, 0.3000])
    """
    _check_tensor("jump_relu", z)
    check_choice("jump_relu", backward, name="backward", choices=_BACKWARDS)
    if isinstance(kappa, Tensor) or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        # ONNX has no threshold with a non-zero threshold: a compare and a select export everywhere.
        out = torch.where(z > kappa, z, torch.zeros((), dtype=z.dtype, device=z.device))   # not z·mask: -0.0, NaN·0
    else:
        out = F.threshold(z, float(kappa), 0.0)       # one fused kernel: z where z > kappa, else 0
    if backward == "relu":
        relu = z.clamp_min(0)            # not F.relu: a retrofit's mode would redirect it here again
        out = relu + (out - relu).detach()
    return out


def bounded_relu(z: Tensor, t: float) -> Tensor:
    """Bounded ReLU, ``min(max(z, 0), t)``.

    Example:
        >>> bounded_relu(torch.tensor([-1.0, 0.5, 3.0]), 1.0)
        tensor([0.0000, 0.5000, 1.0000])
    """
    _check_tensor("bounded_relu", z)
    check_float("bounded_relu", t, name="t", low=0.0, low_inclusive=False)
    return z.clamp(0.0, t)


class JumpReLU(nn.Module):
    """:func:`jump_relu` with a fixed ``kappa`` (>= 0); ``backward`` as there.

    Example:
        >>> JumpReLU(0.5)(torch.tensor([0.4, 0.6]))
        tensor([0.0000, 0.6000])
    """

    randomized = False

    def __init__(self, kappa: float = 0.0, *, backward: str = "exact") -> None:
        super().__init__()
        self.kappa = check_float("JumpReLU", kappa, name="kappa", low=0.0)
        self.backward = check_choice("JumpReLU", backward, name="backward", choices=_BACKWARDS)

    def forward(self, z: Tensor) -> Tensor:
        return jump_relu(z, self.kappa, backward=self.backward)

    def extra_repr(self) -> str:
        return f"kappa={self.kappa}" + (f", backward={self.backward!r}" if self.backward != "exact" else "")


class RandomJumpReLU(nn.Module):
    """JumpReLU whose κ is drawn uniformly in ``[low, high]`` at every call (the paper's randomized variant).

    Draws come from ``generator`` (set it, or pass one to :func:`retrofit`, for reproducible
    draws); ``None`` uses torch's global generator. One κ per call, shared by the batch: each
    layer of a retrofitted network draws its own.

    Example:
        >>> act = RandomJumpReLU(0.0, 1.0, generator=torch.Generator().manual_seed(0))
        >>> act(torch.full((3,), 0.6))
        tensor([0.6000, 0.6000, 0.6000])
    """

    randomized = True

    def __init__(self, low: float = 0.0, high: float = 1.0, *, generator: torch.Generator | None = None,
                 backward: str = "exact") -> None:
        super().__init__()
        self.low = check_float("RandomJumpReLU", low, name="low", low=0.0)
        self.high = check_float("RandomJumpReLU", high, name="high", low=self.low)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise DTypeError(f"RandomJumpReLU: expected generator to be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.backward = check_choice("RandomJumpReLU", backward, name="backward", choices=_BACKWARDS)

    def draw_kappa(self) -> float:
        """One κ in [low, high] from ``generator`` (on the CPU, so draws do not depend on the device)."""
        u = torch.rand((), generator=self.generator).item()
        return self.low + (self.high - self.low) * u

    def forward(self, z: Tensor) -> Tensor:
        return jump_relu(z, self.draw_kappa(), backward=self.backward)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}" + (f", backward={self.backward!r}" if self.backward != "exact" else "")


class BoundedReLU(nn.Module):
    """:func:`bounded_relu` with a fixed bound ``t`` (> 0).

    Example:
        >>> BoundedReLU(1.0)(torch.tensor([-2.0, 2.0]))
        tensor([0., 1.])
    """

    randomized = False

    def __init__(self, t: float = 1.0) -> None:
        super().__init__()
        self.t = check_float("BoundedReLU", t, name="t", low=0.0, low_inclusive=False)

    def forward(self, z: Tensor) -> Tensor:
        return bounded_relu(z, self.t)

    def extra_repr(self) -> str:
        return f"t={self.t}"


#: Activation names accepted by :func:`retrofit` and by configs (``retrofit = { activation = ... }``).
ACTIVATIONS: dict[str, type[nn.Module]] = {"jumprelu": JumpReLU, "random_jumprelu": RandomJumpReLU,
                                           "bounded_relu": BoundedReLU}


def make_activation(activation: str | nn.Module, **params: Any) -> nn.Module:
    """An activation module from a name in :data:`ACTIVATIONS` and its parameters, or a module as is."""
    if isinstance(activation, nn.Module):
        if params:
            raise RetrofitError(f"retrofit: parameters {sorted(params)} given with an activation module; "
                                "set them on the module instead")
        return activation
    check_choice("retrofit", activation, name="activation", choices=tuple(ACTIVATIONS))
    try:
        return ACTIVATIONS[activation](**params)
    except TypeError as e:       # an unknown keyword: name the ones that exist
        import inspect
        known = [p for p in inspect.signature(ACTIVATIONS[activation]).parameters if p != "self"]
        raise RetrofitError(f"retrofit: {activation}: {e}; its parameters are {known}") from None


# The functional spellings of ReLU that a network's code may call; nn.ReLU calls F.relu.
_RELU_FUNCS = {F.relu, torch.relu, Tensor.relu}
_RELU_INPLACE = {torch.relu_, Tensor.relu_, F.relu_}


class _ReplaceReLU(TorchFunctionMode):
    """Redirects every functional ReLU call to ``activation`` (in-place calls write the result back)."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.activation = activation
        self.calls = 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        inplace = func in _RELU_INPLACE or (func is F.relu and (kwargs.get("inplace") or
                                                                   (len(args) > 1 and args[1])))
        if func in _RELU_FUNCS or func in _RELU_INPLACE:
            self.calls += 1
            z = args[0] if args else kwargs["input"]
            if not inplace:
                return self.activation(z)
            # In place, as the caller asked: computed from a clone, so that autograd's saved copy of
            # the input is not the tensor being overwritten.
            return z.copy_(self.activation(z.clone()))
        return func(*args, **kwargs)


class Retrofitted(nn.Module):
    """A copy of a trained network whose ReLUs run as ``activation``; made by :func:`retrofit`.

    ``forward`` and ``features`` (when the network has one) run the copy with every functional ReLU
    redirected; its ``nn.ReLU`` modules were replaced by ``activation`` itself. Other attributes
    (e.g. ``pretrained_cfg``) are the network's.

    Attributes:
        model: the retrofitted copy (its nn.ReLU modules replaced).
        activation: the activation module every ReLU now runs.
    """

    def __init__(self, model: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.activation = activation

    @property
    def randomized(self) -> bool:
        """True when every forward draws (``RandomJumpReLU``): attack it with EOT."""
        return bool(getattr(self.activation, "randomized", False))

    def _run(self, method: str, x: Tensor) -> Tensor:
        with _ReplaceReLU(self.activation):
            return getattr(self.model, method)(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._run("forward", x)

    def features(self, x: Tensor) -> Tensor:
        if not hasattr(self.model, "features"):
            raise AttributeError(f"{type(self.model).__name__} has no features()")
        return self._run("features", x)

    @contextlib.contextmanager
    def relu_backward(self) -> Iterator["Retrofitted"]:
        """Within the block, gradients flow as through ReLU (BPDA); values are unchanged.

        Example:
            >>> net = retrofit(torch.nn.Sequential(torch.nn.ReLU()), "jumprelu", kappa=1.0)
            >>> x = torch.tensor([0.5], requires_grad=True)
            >>> with net.relu_backward():
            ...     net(x).sum().backward()
            >>> x.grad
            tensor([1.])
        """
        if not hasattr(self.activation, "backward"):
            raise RetrofitError(f"{type(self.activation).__name__} has no ReLU-surrogate backward")
        before = self.activation.backward
        self.activation.backward = "relu"
        try:
            yield self
        finally:
            self.activation.backward = before

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = super().__getattr__("model")
            if name.startswith("_"):
                raise
            return getattr(model, name)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


def retrofit(model: nn.Module, activation: str | nn.Module = "jumprelu", *,
             example_input: Tensor | None = None, generator: torch.Generator | None = None,
             **params: Any) -> Retrofitted:
    """A copy of ``model`` with every ReLU replaced by ``activation``; ``model`` is left untouched.

    Args:
        model: a trained ``nn.Module`` that uses ReLU (modules or functional calls).
        activation: a name in :data:`ACTIVATIONS` (``"jumprelu"``, ``"random_jumprelu"``,
            ``"bounded_relu"``) with its ``params`` (``kappa``; ``low``/``high``; ``t``), or a module.
        example_input: a batch to check that at least one ReLU runs (default: a zero batch of
            ``model.pretrained_cfg.input_size`` when the model has one; else only ``nn.ReLU``
            modules are counted, and a model with none of them is accepted as is).
        generator: the draws of a randomized activation (``random_jumprelu``).

    Raises:
        RetrofitError: a TorchScript module (its code cannot be redirected), or no ReLU found.

    Example:
        >>> from purify.models import create_model
        >>> net = retrofit(create_model("resnet20", pretrained=False), "jumprelu", kappa=0.2)
        >>> net(torch.rand(2, 3, 32, 32)).shape, net.features(torch.rand(2, 3, 32, 32)).shape
        (torch.Size([2, 10]), torch.Size([2, 64]))
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"retrofit: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise RetrofitError("retrofit: a TorchScript module runs compiled code whose ReLUs cannot be replaced; "
                            "retrofit the Python module before scripting it")
    previous = None
    if isinstance(model, Retrofitted):            # re-retrofit the network underneath, not the wrapper
        model, previous = model.model, model.activation
    act = make_activation(activation, **params)
    if generator is not None:
        if not hasattr(act, "generator"):
            raise RetrofitError(f"retrofit: {type(act).__name__} draws nothing; generator applies to random_jumprelu")
        act.generator = generator
    memo: dict[int, Any] = {}
    copied = copy.deepcopy(model, memo)
    swapped = _swap_relu_modules(copied, act, previous=memo.get(id(previous)))
    out = Retrofitted(copied, act)
    if example_input is None and getattr(getattr(model, "pretrained_cfg", None), "input_size", None):
        example_input = torch.zeros(1, *model.pretrained_cfg.input_size)
    if example_input is not None:
        mode = _ReplaceReLU(act)
        was_training = copied.training
        copied.eval()
        try:
            with torch.no_grad(), mode:
                copied(example_input)
        finally:
            copied.train(was_training)
        if swapped == 0 and mode.calls == 0:
            raise RetrofitError(f"retrofit: {type(model).__name__} ran without a ReLU (no nn.ReLU module and no "
                                "F.relu / torch.relu / Tensor.relu call); nothing to replace")
    elif swapped == 0 and not _calls_relu_in_source(model):
        raise RetrofitError(f"retrofit: found no ReLU in {type(model).__name__}; pass example_input= to check "
                            "functional calls")
    return out


def _swap_relu_modules(model: nn.Module, act: nn.Module, previous: nn.Module | None = None) -> int:
    """Replace every ``nn.ReLU`` child (at any depth), and ``previous`` (an earlier retrofit's
    activation), by ``act``; returns how many were replaced."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU or (previous is not None and child is previous):
                setattr(parent, name, act)
                n += 1
    if type(model) is nn.ReLU:
        raise RetrofitError("retrofit: the model is a bare nn.ReLU; use the activation module itself")
    return n


def _calls_relu_in_source(model: nn.Module) -> bool:
    """Whether any module class in ``model`` mentions a functional ReLU in its source (a cheap static check)."""
    import inspect
    for m in model.modules():
        try:
            src = inspect.getsource(type(m))
        except (OSError, TypeError):
            return True           # no source to read (compiled, interactive): do not refuse on a guess
        if "relu" in src:
            return True
    return False
