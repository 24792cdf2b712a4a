"""Adversarial training: crafting L-inf training examples through surrogate gradients.

Four recipes, all exact BPTT through a surrogate gradient (the model's own, or one drawn per
batch from a family, so that the model cannot learn to resist only the gradient it is trained with):

* ``fgsm-rs`` — FGSM from a uniform random start (Wong et al. 2020, "Fast is better
  than free", https://arxiv.org/abs/2001.03994); step ``alpha`` defaults to 1.25 eps.
* ``pgd`` — Madry et al. 2018 (https://arxiv.org/abs/1706.06083): random start,
  ``steps`` signed-gradient steps of ``alpha`` (default 2.5 eps / steps).
* ``trades`` — Zhang et al. 2019 (https://arxiv.org/abs/1901.08573): the inner
  maximization of KL(f(x) || f(x')), loss CE(f(x), y) + beta KL(f(x) || f(x')).
* ``mart`` — Wang et al. 2020 (https://openreview.net/forum?id=rklOg6EFwS): CE-crafted examples,
  loss BCE(f(x'), y) + beta KL(f(x) || f(x')) (1 - p_y(x)), weighting misclassified clean inputs.

The inner maximization is fixed-step PGD (``attack="pgd"``) or APGD (``attack="apgd"``, Croce &
Hein 2020, https://arxiv.org/abs/2003.01690: the first stage of the standard suite, with its
adaptive step size and momentum; it returns the best-loss iterate of a full-length run).
"""
from __future__ import annotations

import math

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.apgd import APGD, run_apgd
from ..errors import RobustSNNError
from ..neurons import use_surrogate
from ..pgd import linf_pgd, step_size, uniform_start
from ..specs import split_spec_list
from ..surrogates import canonical

ADV_METHODS = ("none", "fgsm-rs", "pgd", "trades", "mart")
#: inner maximizers: fixed-step PGD, or APGD (the standard suite's first attack)
CRAFT_ATTACKS = ("pgd", "apgd")
#: in a gradient family, the model's own training surrogate
OWN_GRADIENT = "model"


def default_alpha(method: str, eps: float, steps: int) -> float:
    """Step size used when ``--adv-alpha`` is not given."""
    if method == "fgsm-rs":
        return 1.25 * eps
    return step_size(eps, steps)


def parse_gradients(text: Optional[str], *, own: Optional[str] = None) -> List[Optional[str]]:
    """``"model,fast_sigmoid:slope=5,rate"`` -> ``[None, "fast_sigmoid:slope=5", "rate"]`` (validated, canonical).

    ``None`` or empty text: only the model's own surrogate. ``model`` names it in a list; so does ``own`` (the
    training surrogate) spelled out, so that ``model,fast_sigmoid:slope=25`` does not draw that gradient twice as often.
    """
    if text is None or not str(text).strip():
        return [None]
    own = None if own is None else canonical(own)
    out: List[Optional[str]] = []
    for spec in split_spec_list(text):
        try:
            g = None if spec.strip().lower() == OWN_GRADIENT else canonical(spec)
        except RobustSNNError as e:
            raise RobustSNNError(f"--adv-gradients: {e} (or '{OWN_GRADIENT}' for the training surrogate)") from None
        if g == own:  # the training surrogate spelled out
            g = None
        if g not in out:
            out.append(g)
    if not out:
        raise RobustSNNError(f"--adv-gradients {text!r} names no gradient; e.g. model,fast_sigmoid:slope=5,atan")
    return out


def validate_adv(method: str, eps: float, steps: int, alpha: Optional[float], beta: float, *, attack: str = "pgd",
                 gradients: Optional[str] = None) -> None:
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
    if attack not in CRAFT_ATTACKS:
        raise RobustSNNError(f"unknown --adv-attack {attack!r}; choose one of: {', '.join(CRAFT_ATTACKS)}")
    if attack == "apgd" and method == "fgsm-rs":
        raise RobustSNNError("--adv fgsm-rs is a single step; --adv-attack apgd applies to pgd, trades and mart")
    if attack == "apgd" and alpha is not None:
        raise RobustSNNError("--adv-alpha sets PGD's fixed step; APGD adapts its own step size: leave --adv-alpha out")
    parse_gradients(gradients)


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
    attack: str = "pgd",
    gradient: Optional[str] = None,
) -> torch.Tensor:
    """Adversarial training examples in the L-inf ball of radius ``eps`` around ``x``.

    The model is put in eval mode while crafting (no dropout noise in the
    attacker's gradient) and restored afterwards. Parameters get no gradient.

    Args:
        method: ``fgsm-rs``, ``pgd`` or ``mart`` (cross-entropy), ``trades`` (KL to the clean output).
        attack: inner maximizer, ``pgd`` (fixed step ``alpha``) or ``apgd`` (adaptive step, best-loss iterate).
        gradient: surrogate spec or ``"rate"`` for the backward pass (``None``: the model's own);
            the forward pass is unchanged.

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
        with use_surrogate(model, gradient):
            if method == "trades":
                with torch.no_grad():
                    p_clean = F.softmax(model(x), dim=1)
                if attack == "apgd":
                    return _apgd(model, x, y, eps=eps, steps=steps, loss=lambda lg, _y, _t: _kl(lg, p_clean))
                start = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
                return linf_pgd(lambda z: F.kl_div(F.log_softmax(model(z), dim=1), p_clean, reduction="sum"), x, start,
                                eps=eps, alpha=a, steps=steps)
            if attack == "apgd" and method != "fgsm-rs":
                return _apgd(model, x, y, eps=eps, steps=steps,
                             loss=lambda lg, yy, _t: F.cross_entropy(lg, yy, reduction="none"))
            n_steps = 1 if method == "fgsm-rs" else steps
            return linf_pgd(lambda z: F.cross_entropy(model(z), y), x, uniform_start(x, eps), eps=eps, alpha=a, steps=n_steps)
    finally:
        model.train(was_training)


def _kl(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p_clean || softmax(logits)) (TRADES' inner objective)."""
    return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(1)


def _apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, loss) -> torch.Tensor:
    """The best-loss iterate of one full-length APGD run (no early exit: training wants high loss, not first success)."""
    atk = APGD(model, eps=eps, steps=steps, early_exit=False)
    x_best, _, _, _ = run_apgd(atk, x, y, loss, early_exit=False)
    return x_best.clamp(0, 1).detach()


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, *, beta: float) -> torch.Tensor:
    """TRADES objective: CE on clean logits plus ``beta`` times KL(clean || adversarial) (batch mean)."""
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + beta * kl


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, *, beta: float) -> torch.Tensor:
    """MART objective (Wang et al. 2020): boosted CE on the adversarial output plus ``beta`` times the
    KL(clean || adversarial) weighted by how unsure the clean prediction is, ``1 - p_y(x)`` (batch mean).

    Boosted CE: CE(f(x'), y) - log(1 - the largest wrong-class probability of f(x')), as the authors' code.
    """
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(p_adv, dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), wrong)
    p_clean = F.softmax(logits_clean, dim=1)
    true_p = p_clean.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_clean, reduction="none").sum(1)
    return bce + beta * (kl * (1.0000001 - true_p)).mean()


def warmup_eps(eps: float, *, step: int, warmup_steps: int) -> float:
    """Linear eps ramp from ``eps / warmup_steps`` to ``eps`` over the first ``warmup_steps`` optimizer steps."""
    if warmup_steps <= 0:
        return eps
    return eps * min(1.0, (step + 1) / warmup_steps)
