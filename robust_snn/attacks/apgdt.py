"""Targeted Auto-PGD (APGD-T, DLR loss towards the top-k other classes) with per-sample early exit.

Croce & Hein 2020, https://arxiv.org/abs/2003.01690. torchattacks' ``APGDT`` with its
``attack_single_run`` replaced by :func:`robust_snn.attacks.apgd.run_apgd`: the same update rule
and step-size schedule, but a sample leaves the batch at its first misclassified iterate (see
:mod:`robust_snn.attacks.apgd` for why this is written here).
"""
from __future__ import annotations

import torch
import torchattacks
from torch import nn

from .apgd import run_apgd


class APGDT(torchattacks.APGDT):
    """torchattacks' L∞ targeted APGD-DLR, run towards each of the top ``targets`` other classes in turn.

    Args:
        model: classifier, inputs in [0, 1].
        eps: L∞ budget.
        steps: iterations per target class.
        seed: seed of the random start.
        n_classes: number of classes.
        targets: how many of the highest-scoring other classes to try (as AutoAttack).
        early_exit: drop a sample at its first misclassified iterate.

    Shape:
        ``[B, ...]`` in [0, 1] -> ``[B, ...]`` within eps of the input.
    """

    def __init__(self, model: nn.Module, *, eps: float, steps: int = 100, seed: int = 0, n_classes: int = 10,
                 targets: int = 9, rho: float = 0.75, early_exit: bool = True) -> None:
        super().__init__(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=n_classes, rho=rho)
        self.n_target_classes = max(1, min(int(targets), n_classes - 1))
        self.early_exit = bool(early_exit)

    def attack_single_run(self, x_in: torch.Tensor, y_in: torch.Tensor):
        with torch.no_grad():
            target = self.get_logits(x_in).sort(dim=1)[1][:, -self.target_class]
        return run_apgd(self, x_in, y_in, lambda logits, y, t: self.dlr_loss_targeted(logits, y, t), target=target,
                        early_exit=self.early_exit)
