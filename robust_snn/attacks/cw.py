"""Carlini-Wagner L2 attack, box constraint by projection (no tanh, no early abort).

torchattacks' CW optimizes in tanh space and aborts when the loss rises
between checkpoints. On spiking models both fail: saturated MNIST pixels
(0 or 1) have a vanishing tanh gradient, and spike-count losses are noisy, so
it returns the clean image. This variant optimizes the perturbation directly
with Adam and projects onto [0, 1] after every step ("projected gradient
descent" box constraint in Carlini & Wagner, https://arxiv.org/abs/1608.04644).
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torchattacks


class CW(torchattacks.attack.Attack):
    """CW-L2: minimize ``||delta||_2^2 + c * max(z_y - max_{k!=y} z_k, -kappa)``, margin gradient normalized.

    Returns, per input, the smallest-L2 adversarial example found (the input
    itself where none was found).

    Args:
        model: classifier on [0, 1] images.
        c: weight of the (normalized) margin gradient; the search starts here.
        kappa: required logit margin (use >= 1 for integer spike-count logits).
        steps: Adam iterations per search step.
        lr: Adam learning rate (pixel scale).
        search_steps: binary-search rounds over ``c`` per input (x10 while
            unsuccessful, bisect once successful), as in the paper; surrogate
            gradients of spiking models are small, so ``c`` often has to grow.

    Shape: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, model: torch.nn.Module, *, c: float = 1.0, kappa: float = 1.0, steps: int = 100, lr: float = 0.05,
                 search_steps: int = 5) -> None:
        super().__init__("CW", model)
        self.c = float(c)
        self.search_steps = int(search_steps)
        self.kappa = float(kappa)
        self.steps = int(steps)
        self.lr = float(lr)
        self.supported_mode = ["default"]

    @classmethod
    def from_params(cls, model: torch.nn.Module, eps: float, params: Dict[str, Any], n_classes: int,
                    eot_samples: int) -> "CW":
        """The registry's builder (:attr:`robust_snn.attacks.registry.AttackSpec.build`): one attack for budget ``eps``."""
        return cls(model, c=float(params["c"]), kappa=float(params["kappa"]), steps=int(params["steps"]), lr=float(params["lr"]),
                   search_steps=int(params["search_steps"]))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        best = images.clone()
        best_l2 = torch.full((len(images),), float("inf"), device=self.device)
        num_classes = self.get_logits(images[:1]).shape[1]
        onehot = torch.nn.functional.one_hot(labels, num_classes=num_classes).bool()
        # Surrogate input gradients of spiking models are tiny and erratic
        # (orders of magnitude below an ANN's), so the margin term's gradient
        # is normalized per input: the update direction is
        # 2 * delta + c * grad_f / ||grad_f||_2, and ``c`` is searched as usual.
        c = torch.full((len(images),), self.c, device=self.device)
        lo = torch.zeros_like(c)
        hi = torch.full_like(c, float("inf"))
        for _ in range(self.search_steps):
            found = torch.zeros(len(images), dtype=torch.bool, device=self.device)
            delta = torch.zeros_like(images, requires_grad=True)
            opt = torch.optim.Adam([delta], lr=self.lr)
            for _ in range(self.steps):
                adv = (images + delta).clamp(0, 1)
                logits = self.get_logits(adv)
                real = logits[onehot]
                other = logits.masked_fill(onehot, float("-inf")).max(1).values
                f = torch.clamp(real - other, min=-self.kappa)
                l2sq = (adv - images).flatten(1).pow(2).sum(1)
                g_f = torch.autograd.grad(f.sum(), delta)[0]
                g_norm = g_f.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *([1] * (images.dim() - 1)))
                cv = c.view(-1, *([1] * (images.dim() - 1)))
                opt.zero_grad()
                delta.grad = 2 * (adv.detach() - images) + cv * g_f / g_norm
                opt.step()
                with torch.no_grad():
                    delta.data = (images + delta).clamp(0, 1) - images
                    success = logits.argmax(1) != labels
                    found |= success
                    l2 = l2sq.sqrt()
                    improve = success & (l2 < best_l2)
                    best[improve] = adv.detach()[improve]
                    best_l2[improve] = l2[improve]
            with torch.no_grad():
                hi = torch.where(found, torch.minimum(hi, c), hi)
                lo = torch.where(found, lo, torch.maximum(lo, c))
                c = torch.where(hi.isfinite(), (lo + hi) / 2, c * 10)
        return best.detach()
