"""Greedy gradient-guided event flips within an L0 budget (binary event frames)."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torchattacks

from .losses import margins


class GreedyFlip(torchattacks.attack.Attack):
    """Flip the events whose flip the input gradient says helps most, a few at a time, until the budget.

    Each iteration takes the gradient of the margin loss (true logit minus the best other)
    at the current binary frames, scores every entry by the first-order change a flip makes
    (``-grad * (1 - 2x)``: adding an event where the gradient is negative, removing one where
    it is positive), and flips the ``per_step`` best unflipped entries of each still-correct
    sample. It stops for a sample once it is misclassified, so successes use few flips. The
    result is binary and differs from the input in at most ``budget`` entries (exact L0);
    with ``add_only`` only empty entries are candidates (events are added, never removed).
    In the spirit of the sparse attacks on event data (SpikeFool, Büchel et al. 2022; SDA,
    PDSG-SDA, CVPR 2025, https://arxiv.org/abs/2503.03272), without their pruning step.

    Args:
        model: classifier on event tensors ``[B, T, P, H, W]`` in {0, 1}.
        budget: the most entries flipped per sample.
        per_step: entries flipped per iteration.
        add_only: only add events (0 -> 1), never remove one (the ``add-only`` threat model).

    Shape: ``[B, T, P, H, W]`` -> ``[B, T, P, H, W]``.
    """

    def __init__(self, model: torch.nn.Module, *, budget: int, per_step: int = 5, add_only: bool = False) -> None:
        super().__init__("GreedyFlip", model)
        self.budget, self.per_step, self.add_only = int(budget), max(1, int(per_step)), bool(add_only)
        self.supported_mode = ["default"]

    @classmethod
    def from_params(cls, model: torch.nn.Module, eps: float, params: Dict[str, Any], n_classes: int,
                    eot_samples: int) -> "GreedyFlip":
        """The registry's builder (:attr:`robust_snn.attacks.registry.AttackSpec.build`): one attack for budget ``eps``."""
        return cls(model, budget=int(eps), per_step=int(params["per_step"]), add_only=bool(params.get("add_only", False)))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone().detach().to(self.device).round()
        y = labels.clone().detach().to(self.device)
        adv = x.clone()
        # entries that may not flip (any more): flipped ones, and with add_only every existing event
        flipped = (x.flatten(1) == 1) if self.add_only else torch.zeros_like(x, dtype=torch.bool).flatten(1)
        used = torch.zeros(len(x), dtype=torch.long, device=x.device)
        while True:
            adv.requires_grad_(True)
            logits = self.get_logits(adv)
            (g,) = torch.autograd.grad(margins(logits, y).sum(), adv)
            adv = adv.detach()
            left = (~flipped).sum(1)
            active = (logits.detach().argmax(1) == y) & (used < self.budget) & (left > 0)
            if not bool(active.any()):
                break
            gain = (-g * (1 - 2 * adv)).flatten(1).masked_fill(flipped, float("-inf"))
            take = torch.minimum(torch.clamp(self.budget - used, max=self.per_step), left)
            top = gain.topk(min(self.per_step, gain.shape[1]), dim=1).indices
            rank = torch.arange(top.shape[1], device=x.device)[None, :]
            choose = (rank < take[:, None]) & active[:, None]
            rows = torch.arange(len(x), device=x.device)[:, None].expand_as(top)
            sel_rows, sel_cols = rows[choose], top[choose]
            flat = adv.flatten(1).clone()
            flat[sel_rows, sel_cols] = 1 - flat[sel_rows, sel_cols]
            flipped[sel_rows, sel_cols] = True
            used += choose.sum(1)
            adv = flat.view_as(x)
        return adv.detach()
