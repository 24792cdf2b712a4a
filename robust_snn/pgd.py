"""The one L∞ PGD core of robust-snn's own attacks (adversarial training, adaptive detector attack).

Evaluation uses torchattacks' PGD/APGD; robust-snn's own loops (``defenses.adversarial.craft``
for adversarial training and TRADES, ``attacks.ConsistencyPGD``) take their random start,
signed-gradient step, projection and default step size from here, so they cannot drift
apart. Madry et al. 2018, https://arxiv.org/abs/1706.06083.

Shape: ``x``, ``x_adv``: ``[B, ...]`` in [0, 1].
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from .threat import THREAT_MODELS

#: default PGD step size: ``PGD_STEP_SCALE * eps / steps`` (Madry et al.: 2.5 eps / steps)
PGD_STEP_SCALE = 2.5

_LINF = THREAT_MODELS["Linf"]


def step_size(eps: float, steps: int, *, scale: float = PGD_STEP_SCALE) -> float:
    """The default step size ``scale * eps / steps``."""
    return scale * eps / max(1, int(steps))


def pgd_alpha(eps: float, params: Mapping[str, Any]) -> float:
    """The step size of a PGD-family attack from its parameters: ``alpha`` when set, else
    :func:`step_size` of ``steps`` and ``step_scale``."""
    if params.get("alpha") is not None:
        return float(params["alpha"])
    return step_size(eps, int(params["steps"]), scale=float(params["step_scale"]))


def uniform_start(x: torch.Tensor, eps: float) -> torch.Tensor:
    """A uniform random point of the L∞ ball around ``x``, clipped to [0, 1]."""
    return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)


def linf_step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, *, eps: float, alpha: float) -> torch.Tensor:
    """One signed-gradient ascent step of size ``alpha``, projected back into the L∞ ball and [0, 1]."""
    return _LINF.project(x_adv.detach() + alpha * grad.sign(), x, eps).detach()


def linf_pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, start: torch.Tensor, *, eps: float,
             alpha: float, steps: int) -> torch.Tensor:
    """``steps`` ascent steps on ``loss_fn`` (a scalar) from ``start``; returns the last iterate.

    The caller owns the mode of its model (eval while crafting) and the random start.
    """
    x = x.detach()
    x_adv = start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = linf_step(x_adv, g, x, eps=eps, alpha=alpha)
    return x_adv.detach()
