"""Input encoders: images ``[B, C, H, W]`` in [0, 1] to time-first sequences ``[T, B, C, H, W]``.

Every encoder is differentiable w.r.t. the image (stochastic sampling uses a
straight-through estimator) so gradient attacks on rate- or latency-coded
models are not silent no-ops. Stochastic encoders draw from their own
:class:`torch.Generator`, independent of the global RNG that several
torchattacks attacks reseed.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import torch
from torch import nn

from .errors import RobustSNNError


class Encoder(nn.Module):
    """Base class. ``stochastic`` says whether two calls may differ; ``static``
    whether every time step carries the same input (lets the model compute the
    first layer once)."""

    stochastic: bool = False
    static: bool = False

    def forward(self, x: torch.Tensor, num_steps: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class DirectEncoder(Encoder):
    """Image as a constant input current at every step.

    Shape: ``[B, ...]`` -> ``[T, B, ...]`` (an expanded view, no copy).
    """

    static = True

    def forward(self, x: torch.Tensor, num_steps: int) -> torch.Tensor:
        return x.unsqueeze(0).expand(num_steps, *x.shape)


class _StraightThroughBernoulli(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:  # type: ignore[override]
        return torch.bernoulli(p, generator=generator)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        return grad_out, None


class RateEncoder(Encoder):
    """Poisson/Bernoulli rate coding: spike with probability ``gain * x`` each step.

    Forward samples like :func:`snntorch.spikegen.rate`; backward treats the
    sampling as the identity (straight-through), so ``d spk / d x = gain``.

    Args:
        gain: scales the firing probability (clamped to [0, 1]).
        seed: seed of the encoder's own generator (``None``: nondeterministic).

    Shape: ``[B, ...]`` -> ``[T, B, ...]``.
    """

    stochastic = True

    def __init__(self, *, gain: float = 1.0, seed: Optional[int] = 0) -> None:
        super().__init__()
        self.gain = float(gain)
        self.seed = seed
        self._generators: Dict[str, torch.Generator] = {}

    def reseed(self, seed: Optional[int]) -> None:
        """Restart the encoder's random stream (``None``: fresh entropy)."""
        self.seed = seed
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            if self.seed is None:
                g.seed()
            else:
                g.manual_seed(int(self.seed))
            self._generators[key] = g
        return self._generators[key]

    def forward(self, x: torch.Tensor, num_steps: int) -> torch.Tensor:
        p = (self.gain * x).clamp(0.0, 1.0)
        p_seq = p.unsqueeze(0).expand(num_steps, *p.shape)
        return _StraightThroughBernoulli.apply(p_seq.contiguous(), self._generator(p.device))


class LatencyEncoder(Encoder):
    """Time-to-first-spike coding: brighter pixels spike earlier, each at most once.

    A pixel with intensity ``x > min_intensity`` spikes once at step
    ``round((1 - x) * (T - 1))`` (linear latency, as
    ``snntorch.spikegen.latency(linear=True, normalize=True)``); darker pixels
    never spike. Backward uses a triangular kernel around the spike time so
    the gradient tells how moving the spike earlier or later changes the loss.

    Shape: ``[B, ...]`` -> ``[T, B, ...]``.
    """

    def __init__(self, *, min_intensity: float = 0.01) -> None:
        super().__init__()
        self.min_intensity = float(min_intensity)

    def forward(self, x: torch.Tensor, num_steps: int) -> torch.Tensor:
        x = x.clamp(0.0, 1.0)
        t_spike = (1.0 - x) * (num_steps - 1)  # real-valued spike time
        steps = torch.arange(num_steps, device=x.device, dtype=x.dtype).view(-1, *([1] * x.dim()))
        active = (x > self.min_intensity).to(x.dtype)
        hard = (steps == torch.round(t_spike).unsqueeze(0)).to(x.dtype) * active
        soft = torch.clamp(1.0 - (t_spike.unsqueeze(0) - steps).abs(), min=0.0) * active
        return hard + (soft - soft.detach())


ENCODERS: Dict[str, Type[Encoder]] = {
    "direct": DirectEncoder,
    "rate": RateEncoder,
    "latency": LatencyEncoder,
}


def make_encoder(name: str) -> Encoder:
    """Encoder by name (``direct``, ``rate`` or ``latency``)."""
    if name not in ENCODERS:
        raise RobustSNNError(f"unknown encoding {name!r}; choose one of: {', '.join(ENCODERS)}")
    return ENCODERS[name]()


def is_stochastic(model: object) -> bool:
    """True if ``model`` (or the model a wrapper forwards to) draws its input spikes at random.

    Such a model needs EOT gradients and averaged predictions (Athalye et al. 2018).
    """
    return bool(getattr(getattr(model, "encoder", None), "stochastic", False))
