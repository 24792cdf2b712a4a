"""Adversarial training: crafting L-inf training examples through surrogate gradients.

Three recipes, all exact BPTT through the model's surrogate gradient:

* ``fgsm-rs`` — FGSM from a uniform random start (Wong et al. 2020, "Fast is better
  than free", https://arxiv.org/abs/2001.03994); step ``alpha`` defaults to 1.25 eps.
* ``pgd`` — Madry et al. 2018 (https://arxiv.org/abs/1706.06083): random start,
  ``steps`` signed-gradient steps of ``alpha`` (default 2.5 eps / steps).
* ``trades`` — Zhang et al. 2019 (https://arxiv.org/abs/1901.08573): the inner
  maximization of KL(f(x) || f(x')), loss CE(f(x), y) + beta KL(f(x) || f(x')).
"""
from __future__ import annotations

import math

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RobustSNNError
from ..pgd import linf_pgd, step_size, uniform_start

ADV_METHODS = ("none", "fgsm-rs", "pgd", "trades")


def default_alpha(method: str, eps: float, steps: int) -> float:
    """Step size used when ``--adv-alpha`` is not given."""
    if method == "fgsm-rs":
        return 1.25 * eps
    return step_size(eps, steps)


def validate_adv(method: str, eps: float, steps: int, alpha: Optional[float], beta: float) -> None:
    """Raise :class:`RobustSNNError` for an unusable adversarial-training setting."""
    if method not in ADV_METHODS:
        raise RobustSNNError(f"unknown --adv {method!r}; choose one of: {', '.join(ADV_METHODS)}")
    if not 0 <= eps <= 1:
        raise RobustSNNError(f"--adv-eps must be in [0, 1] (pixel scale), got {eps}")
    if method != "none" and eps == 0:
        raise RobustSNNError("--adv-eps must be positive for adversarial training")
    if steps < 1:
        raise RobustSNNError(f"--adv-steps must be >= 1, got {steps}")
    if alpha is not None and not 0 < alpha < math.inf:
        raise RobustSNNError(f"--adv-alpha must be a positive finite number, got {alpha}")
    if not 0 <= beta < math.inf:
        raise RobustSNNError(f"--trades-beta must be a finite number >= 0, got {beta}")


@torch.enable_grad()
def craft(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    eps: float,
    steps: int = 1,
    alpha: Optional[float] = None,
) -> torch.Tensor:
    """Adversarial training examples in the L-inf ball of radius ``eps`` around ``x``.

    The model is put in eval mode while crafting (no dropout noise in the
    attacker's gradient) and restored afterwards. Parameters get no gradient.

    Shape:
        ``x``: ``[B, C, H, W]`` in [0, 1]; ``y``: ``[B]``; returns ``[B, C, H, W]`` in [0, 1].
    """
    if method == "none" or eps == 0:
        return x.detach()
    a = default_alpha(method, eps, steps) if alpha is None else alpha
    was_training = model.training
    model.eval()
    try:
        x = x.detach()
        if method == "trades":
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
            return linf_pgd(lambda z: F.kl_div(F.log_softmax(model(z), dim=1), p_clean, reduction="sum"), x, start,
                            eps=eps, alpha=a, steps=steps)
        n_steps = 1 if method == "fgsm-rs" else steps
        return linf_pgd(lambda z: F.cross_entropy(model(z), y), x, uniform_start(x, eps), eps=eps, alpha=a, steps=n_steps)
    finally:
        model.train(was_training)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, *, beta: float) -> torch.Tensor:
    """TRADES objective: CE on clean logits plus ``beta`` times KL(clean || adversarial) (batch mean)."""
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + beta * kl


def warmup_eps(eps: float, *, step: int, warmup_steps: int) -> float:
    """Linear eps ramp from ``eps / warmup_steps`` to ``eps`` over the first ``warmup_steps`` optimizer steps."""
    if warmup_steps <= 0:
        return eps
    return eps * min(1.0, (step + 1) / warmup_steps)
