"""Auto-PGD (APGD-CE, APGD-DLR) that stops working on a sample once it is misclassified.

Croce & Hein 2020, https://arxiv.org/abs/2003.01690. torchattacks' ``APGD`` runs every sample
of a batch for all its steps, even the ones it has already misclassified; on a CSNN at eps 0.1
two thirds of the images fall within a few steps, so most of the work is wasted. This subclass
keeps torchattacks' ``perturb`` (seeding, restarts) and its update rule, momentum and per-sample
step-size schedule unchanged, and only replaces ``attack_single_run`` so that a sample leaves
the batch at its first misclassified iterate (written here because torchattacks has no such
option). Every per-sample quantity of APGD depends on that sample alone, so the samples still in
the batch follow the same trajectory as in torchattacks (the test checks this in float64).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torchattacks
from torch import nn

from ..threat import THREAT_MODELS

_LINF = THREAT_MODELS["Linf"]

Loss = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def run_apgd(atk: torchattacks.attack.Attack, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss, *,
             target: Optional[torch.Tensor] = None, early_exit: bool = True
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One L∞ APGD run (torchattacks' ``attack_single_run``), dropping samples once misclassified.

    Args:
        atk: the attack (``eps``, ``steps``, ``thr_decr`` (rho), ``eot_iter``, ``get_logits``).
        x: clean inputs in [0, 1].
        y: labels.
        loss_fn: ``(logits, y, target) -> per-sample loss`` to maximise.
        target: per-sample target classes (targeted loss) or ``None``.
        early_exit: drop a sample from the batch at its first misclassified iterate.

    Returns:
        ``(x_best, acc, loss_best, x_best_adv)`` as torchattacks: best-loss iterate, still
        correctly classified, best loss, and an adversarial example where ``acc`` is False.

    Shape:
        ``x``: ``[B, ...]``; ``y``, ``target``: ``[B]``.
    """
    if atk.norm != "Linf":
        raise ValueError("robust_snn's APGD implements the L∞ threat model only")
    steps, eps, n = int(atk.steps), float(atk.eps), x.shape[0]
    steps_2, steps_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    view = [-1] + [1] * (x.dim() - 1)

    t = 2 * torch.rand(x.shape).to(x.device) - 1  # drawn on the CPU, as torchattacks: the same starts on every device
    # projected, unlike torchattacks: eps * t is float32, so a float64 start could leave the ball by one float32 ulp
    x_adv = _LINF.project(x + eps * t / t.reshape(n, -1).abs().max(dim=1)[0].reshape(view), x, eps)

    def grad_at(xa: torch.Tensor, ya: torch.Tensor, ta: Optional[torch.Tensor]):
        xa = xa.clone().requires_grad_()
        g = torch.zeros_like(xa)
        for _ in range(atk.eot_iter):
            with torch.enable_grad():
                logits = atk.get_logits(xa)
                loss_indiv = loss_fn(logits, ya, ta)
            g += torch.autograd.grad(loss_indiv.sum(), [xa])[0].detach()
        return xa.detach(), logits.detach(), loss_indiv.detach(), g / float(atk.eot_iter)

    # full-batch outputs
    acc = torch.ones(n, dtype=torch.bool, device=x.device)
    x_best_out, x_best_adv = x_adv.clone(), x_adv.clone()
    loss_best_out = torch.zeros(n, device=x.device, dtype=x.dtype)

    # state of the samples still in the batch
    idx = torch.arange(n, device=x.device)
    xs, ys, ts = x, y, target
    x_adv, logits, loss_indiv, grad = grad_at(x_adv, ys, ts)
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss_indiv.clone()
    step_size = torch.full([n] + view[1:], 2.0 * eps, device=x.device)
    x_adv_old = x_adv.clone()
    loss_steps = torch.zeros([steps, n])
    loss_best_last_check = loss_best.clone()
    reduced_last_check = np.ones(n, dtype=bool)
    k, counter3 = steps_2, 0

    def keep(sel: torch.Tensor) -> None:
        nonlocal idx, xs, ys, ts, x_adv, grad, x_best, grad_best, loss_best, step_size, x_adv_old
        nonlocal loss_steps, loss_best_last_check, reduced_last_check
        x_best_out[idx] = x_best
        loss_best_out[idx] = loss_best
        idx, xs, ys = idx[sel], xs[sel], ys[sel]
        ts = None if ts is None else ts[sel]
        x_adv, grad, x_best, grad_best = x_adv[sel], grad[sel], x_best[sel], grad_best[sel]
        loss_best, step_size, x_adv_old = loss_best[sel], step_size[sel], x_adv_old[sel]
        loss_steps, loss_best_last_check = loss_steps[:, sel.cpu()], loss_best_last_check[sel]
        reduced_last_check = reduced_last_check[sel.cpu().numpy()]

    pred = logits.argmax(1) == ys
    acc[idx[~pred]] = False
    if early_exit and not bool(pred.all()):
        keep(pred)

    for i in range(steps):
        if len(idx) == 0:
            break
        with torch.no_grad():
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            x_adv_1 = x_adv + step_size * torch.sign(grad)
            x_adv_1 = _LINF.project(x_adv_1, xs, eps)
            x_adv_1 = _LINF.project(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), xs, eps)
        x_adv, logits, loss_indiv, grad = grad_at(x_adv_1, ys, ts)

        pred = logits.argmax(1) == ys
        x_best_adv[idx[~pred]] = x_adv[~pred]  # with early exit only first successes reach here
        acc[idx[~pred]] = False

        with torch.no_grad():
            loss_steps[i] = loss_indiv.cpu()
            better = loss_indiv > loss_best
            x_best[better] = x_adv[better]
            grad_best[better] = grad[better]
            loss_best[better] = loss_indiv[better]
            counter3 += 1
            if counter3 == k:
                ls = loss_steps.numpy()
                rises = np.zeros(ls.shape[1])
                for c5 in range(k):  # torchattacks' check_oscillation (row i-k-1 may wrap to the last, as there)
                    rises += ls[i - c5] > ls[i - c5 - 1]
                fl_osc = rises <= k * atk.thr_decr
                fl_no_impr = ~reduced_last_check & (loss_best_last_check.cpu().numpy() >= loss_best.cpu().numpy())
                fl_osc = fl_osc | fl_no_impr
                reduced_last_check = fl_osc.copy()
                loss_best_last_check = loss_best.clone()
                if fl_osc.any():
                    sel = torch.from_numpy(fl_osc).to(x.device)
                    step_size[sel] /= 2.0
                    x_adv[sel] = x_best[sel]
                    grad[sel] = grad_best[sel]
                counter3 = 0
                k = max(k - size_decr, steps_min)
        if early_exit and not bool(pred.all()):
            keep(pred)

    x_best_out[idx] = x_best
    loss_best_out[idx] = loss_best
    return x_best_out, acc, loss_best_out, x_best_adv


def _ce(logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


class APGD(torchattacks.APGD):
    """torchattacks' L∞ APGD (CE or DLR loss) with per-sample early exit.

    Args:
        model: classifier, inputs in [0, 1].
        eps: L∞ budget.
        steps: iterations.
        seed: seed of the random start.
        loss: ``"ce"`` or ``"dlr"``.
        early_exit: drop a sample at its first misclassified iterate (``False``: torchattacks'
            full-length runs, e.g. for stochastic models whose prediction is noisy).

    Shape:
        ``[B, ...]`` in [0, 1] -> ``[B, ...]`` within eps of the input.
    """

    def __init__(self, model: nn.Module, *, eps: float, steps: int = 100, seed: int = 0, loss: str = "ce",
                 rho: float = 0.75, early_exit: bool = True) -> None:
        if loss not in ("ce", "dlr"):
            raise ValueError(f"unknown APGD loss {loss!r}; choose ce or dlr")
        super().__init__(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss=loss, rho=rho)
        self.early_exit = bool(early_exit)

    def attack_single_run(self, x_in: torch.Tensor, y_in: torch.Tensor):
        loss_fn = _ce if self.loss == "ce" else (lambda logits, y, t: self.dlr_loss(logits, y))
        return run_apgd(self, x_in, y_in, loss_fn, early_exit=self.early_exit)
