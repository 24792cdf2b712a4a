"""Spike functions: Heaviside forward, configurable surrogate backward.

Specs are strings such as ``"fast_sigmoid"``, ``"fast_sigmoid:slope=10"`` or
``"atan:alpha=2"``. Training surrogates are the functions of
:mod:`snntorch.surrogate`; attacks may swap in any of them (and the
rate-based gradient) without changing the forward pass, see
:func:`robust_snn.neurons.use_surrogate` (each :class:`~robust_snn.neurons.LIF`
layer's :meth:`~robust_snn.neurons.LIF.set_surrogate`).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch
from snntorch import surrogate as snn_surrogate

from .errors import RobustSNNError
from .registry import Registry
from .specs import parse_value, split_spec

SpikeFn = Callable[[torch.Tensor], torch.Tensor]


class _HeavisideSpike(torch.autograd.Function):
    """Heaviside forward ``u > 0``; backward ``grad_out * kind(u, param)``."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, kind: str, param: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.kind, ctx.param = kind, param
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        p = ctx.param
        if ctx.kind == "triangular":  # max(0, 1 - |u| / w) / w
            grad = torch.clamp(1.0 - u.abs() / p, min=0.0) / p
        else:  # sigmoid: k s(ku) (1 - s(ku)); stable form of snnTorch's exp(-ku)/(exp(-ku)+1)^2, which is NaN (inf/inf) far below threshold
            s = torch.sigmoid(p * u)
            grad = p * s * (1.0 - s)
        return grad_out * grad, None, None


class _AdaptiveSpike(torch.autograd.Function):
    """Heaviside forward; backward shaped by the membrane statistics of the current input.

    ``u`` is one time step of one layer, ``[B, ...]``; the statistics are taken per
    sample over the layer's neurons, so a sample's gradient never depends on the
    other samples of its batch (the published versions use batch statistics).
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, kind: str, p1: float, p2: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.kind, ctx.p1, ctx.p2 = kind, p1, p2
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        d = u.clone()
        _ADAPTIVE[ctx.kind](ctx.p1, ctx.p2)(d)
        return grad_out * d, None, None, None


def _per_sample(stat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` statistics broadcast against ``like`` ``[B, ...]`` (or an unbatched ``[N]``)."""
    return stat.view(-1, *([1] * (like.dim() - 1))) if like.dim() > 1 else stat


def _pdsg_derivative(shift: float, _unused: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """PDSG: Gaussian of width sigma = std of the layer's membrane potential (per sample), centred at ``shift * sigma``."""

    def derivative_(d: torch.Tensor) -> torch.Tensor:
        flat = d.flatten(1) if d.dim() > 1 else d.view(1, -1)
        sigma = flat.std(1, unbiased=False)
        sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        sigma = _per_sample(sigma, d) if d.dim() > 1 else sigma
        return d.sub_(shift * sigma).div_(sigma * math.sqrt(2.0)).square_().neg_().exp_().div_(sigma * math.sqrt(2 * math.pi))

    return derivative_


def _assg_derivative(vanish: float, relax: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """ASSG: arctan surrogate whose sharpness is ``a / (E|u| + relax * E||u| - E|u||)`` for the current input."""
    a = 2.0 * math.tan(vanish * math.pi) / math.pi  # the sharpness that keeps the expected vanishing below ``vanish``

    def derivative_(d: torch.Tensor) -> torch.Tensor:
        flat = d.abs().flatten(1) if d.dim() > 1 else d.abs().view(1, -1)
        m = flat.mean(1, keepdim=True)
        dev = (flat - m).abs().mean(1)
        alpha = a / (m.squeeze(1) + relax * dev + 1e-4)
        alpha = _per_sample(alpha, d) if d.dim() > 1 else alpha
        return d.mul_(alpha * (math.pi / 2)).square_().add_(1.0).reciprocal_().mul_(alpha / 2)

    return derivative_


_ADAPTIVE: Dict[str, Callable[[float, float], Callable[[torch.Tensor], torch.Tensor]]] = {
    "pdsg": _pdsg_derivative,
    "assg": _assg_derivative,
}


def _adaptive(kind: str, p1: float, p2: float) -> SpikeFn:
    p1, p2 = float(p1), float(p2)

    def inner(u: torch.Tensor) -> torch.Tensor:
        return _AdaptiveSpike.apply(u, kind, p1, p2)

    return inner


def _pdsg(shift: float = 0.5) -> SpikeFn:
    return _adaptive("pdsg", shift, 0.0)


def _assg(vanish: float = 0.4, relax: float = 1.5) -> SpikeFn:
    return _adaptive("assg", vanish, relax)


def _sigmoid(slope: float = 25.0) -> SpikeFn:
    slope = float(slope)

    def inner(u: torch.Tensor) -> torch.Tensor:
        return _HeavisideSpike.apply(u, "sigmoid", slope)

    return inner


def _triangular(width: float = 1.0) -> SpikeFn:
    width = float(width)

    def inner(u: torch.Tensor) -> torch.Tensor:
        return _HeavisideSpike.apply(u, "triangular", width)

    return inner


#: Gradient choices that are not a per-spike surrogate (only for attacks).
SPECIAL_GRADIENTS = {"rate": "backward through firing rates (BPTR / RGA), exact forward"}

#: name -> (factory, default kwargs, description)
SURROGATES: Registry[Tuple[Callable[..., SpikeFn], dict, str]] = Registry("surrogate", {
    "fast_sigmoid": (snn_surrogate.fast_sigmoid, {"slope": 25.0}, "1/(1+k|u|)^2 (SuperSpike)"),
    "atan": (snn_surrogate.atan, {"alpha": 2.0}, "arctan derivative"),
    "sigmoid": (_sigmoid, {"slope": 25.0}, "logistic derivative (stable form of snnTorch's)"),
    "triangular": (_triangular, {"width": 1.0}, "max(0, 1-|u|/w)/w"),
    "straight_through": (lambda: snn_surrogate.straight_through_estimator(), {}, "identity gradient"),
    "pdsg": (_pdsg, {"shift": 0.5},
             "Gaussian, width = per-layer std of the membrane potential of the current input (PDSG, arXiv 2503.03272)"),
    "assg": (_assg, {"vanish": 0.4, "relax": 1.5},
             "arctan, sharpness set per layer from the membrane statistics of the current input (ASSG, arXiv 2512.22522)"),
}, also=SPECIAL_GRADIENTS)

#: Allowed range of every surrogate parameter: (low, high, low inclusive); values must be finite.
PARAM_RANGES: Dict[str, Tuple[float, float, bool]] = {
    "slope": (0.0, math.inf, False),
    "alpha": (0.0, math.inf, False),
    "width": (0.0, math.inf, False),
    "shift": (-5.0, 5.0, True),
    "vanish": (0.0, 0.5, False),
    "relax": (0.0, math.inf, True),
}

#: The gradient set used by ``--surrogate ensemble``.
ENSEMBLE = (
    "fast_sigmoid:slope=5",
    "fast_sigmoid:slope=25",
    "fast_sigmoid:slope=100",
    "atan",
    "sigmoid",
    "triangular",
    "straight_through",
    "pdsg",
    "assg",
    "rate",
)


def parse_spec(spec: str) -> Tuple[str, dict]:
    """Split ``"name:k=v,k2=v2"`` into ``(name, {k: float(v)})`` and validate it (see :mod:`robust_snn.specs`)."""
    name, raw = split_spec(spec, what="surrogate")
    name = name.replace("-", "_")
    if name not in SPECIAL_GRADIENTS:
        SURROGATES.get(name)  # an unknown name: one line listing the choices
    allowed = SURROGATES[name][1] if name in SURROGATES else {}
    kwargs: dict = {}
    for key, value in raw.items():
        if key not in allowed:
            raise RobustSNNError(f"bad surrogate parameter {key!r} in {spec!r}; {name} takes: {', '.join(allowed) or 'none'}")
        kwargs[key] = parse_value(value, key=key, spec=str(spec), what="surrogate", range_=PARAM_RANGES[key])
    return name, kwargs


def canonical(spec: str) -> str:
    """Canonical spelling of a spec, with all default parameters filled in."""
    name, kwargs = parse_spec(spec)
    if name in SPECIAL_GRADIENTS:
        return name
    params = {**SURROGATES[name][1], **kwargs}
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={v:g}" for k, v in params.items())


def make_spike_fn(spec: str) -> SpikeFn:
    """Build the spike function (Heaviside forward, surrogate backward) for ``spec``."""
    name, kwargs = parse_spec(spec)
    if name in SPECIAL_GRADIENTS:
        raise RobustSNNError(f"{name!r} is a gradient mode for attacks, not a spike function for training")
    factory, defaults, _ = SURROGATES[name]
    params = {**defaults, **kwargs}
    fn = factory(**params)
    derivative = _derivative(name, **params)

    def spike_fn(u: torch.Tensor) -> torch.Tensor:
        return fn(u)

    spike_fn.derivative_ = derivative  # type: ignore[attr-defined]
    spike_fn.surrogate_name = name  # type: ignore[attr-defined]  # for kernels that compute s'(u) themselves
    spike_fn.surrogate_params = dict(params)  # type: ignore[attr-defined]
    return spike_fn


def _derivative(name: str, **p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """In-place ``u -> s'(u)`` of a surrogate: the same formula as its backward, without allocating.

    Used by the fused LIF backward on cache-sized per-step slices; tested against
    each surrogate's autograd backward.
    """
    if name == "fast_sigmoid":  # 1 / (k|u| + 1)^2
        k = p["slope"]
        return lambda d: d.abs_().mul_(k).add_(1.0).square_().reciprocal_()
    if name == "atan":  # (a/2) / (1 + (pi/2 a u)^2)
        a = p["alpha"]
        return lambda d: d.mul_(math.pi / 2 * a).square_().add_(1.0).reciprocal_().mul_(a / 2)
    if name == "sigmoid":  # k s(ku) (1 - s(ku))
        k = p["slope"]
        return lambda d: d.mul_(k).sigmoid_().mul_(d.neg().add_(1.0)).mul_(k)
    if name == "triangular":  # max(0, 1 - |u|/w) / w
        w = p["width"]
        return lambda d: d.abs_().div_(-w).add_(1.0).clamp_(min=0.0).div_(w)
    if name == "straight_through":
        return lambda d: d.fill_(1.0)
    if name == "pdsg":
        return _pdsg_derivative(p["shift"])
    if name == "assg":
        return _assg_derivative(p["vanish"], p["relax"])
    raise RobustSNNError(f"no derivative for surrogate {name!r}")  # pragma: no cover - every SURROGATES entry has one
