"""Probabilistic PGA: optimize per-entry flip probabilities, sample binary event frames within an exact L0 budget."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torchattacks

from .losses import margins
from .pga import flip_top, project_capped, relaxed_finish, relaxed_start


class ProbPGA(torchattacks.attack.Attack):
    """Gradient steps on the probabilities of flipping each entry; the attack is the best binary frame sampled.

    The probabilistic PGA of Büchel et al. 2022, "Adversarial attacks on spiking
    convolutional neural networks for event-based vision" (https://arxiv.org/abs/2110.02929;
    code: https://github.com/jubueche/SPAA, ``prob_fool``/``prob_attack_pgd``): every entry
    flips with its own probability ``p``; each step draws ``samples`` binary frames from the
    Bernoulli variables through the logistic (Gumbel) reparameterization, ``flip = [logit(p) +
    logit(u) > 0]`` with ``u`` uniform, evaluates the network on the binary frames, and moves
    ``p`` along the mean margin-loss gradient by the straight-through estimator (the gradient
    at the sampled binary frame stands for the gradient w.r.t. ``p``; SPAA's low-temperature
    relaxed Bernoulli is its smooth version). The step is an L2 step of ``alpha *
    sqrt(budget)`` along the normalized mean gradient; ``p`` is then projected onto
    ``{p in [0, 1]^n : sum(p) <= budget}`` (at most ``budget`` flips expected; ``p = 0`` on
    existing events when ``add_only``). A sampled frame with more than ``budget`` flips keeps
    the ``budget`` with the largest ``logit(p) + logit(u)``, so every sample is within the
    budget and is a candidate. A sample stops once a candidate fools the model; successes are
    pruned to a short prefix of their flips (SPAA's early stopping, by bisection) in the
    order of ``p`` after a step along the gradient at the successful frame, and samples never
    fooled get one last try with the ``budget`` most probable flips.

    Returns, per sample, the best binary example sampled: misclassified with the fewest
    flips, else the one with the smallest margin. Exact budget (with ``add_only`` only
    0 -> 1 entries), binary output, deterministic given ``seed``.

    Args:
        model: classifier on event tensors ``[B, T, P, H, W]`` in {0, 1}.
        budget: the most entries flipped per sample (the L0 or add-only budget).
        steps: gradient steps on ``p``.
        samples: binary frames drawn per step (Monte-Carlo samples of the gradient).
        alpha: L2 step length in units of ``sqrt(budget)``.
        seed: the generator seed of the start and of every draw.
        add_only: only add events (0 -> 1), never remove one (the ``add-only`` threat model).

    Shape: ``[B, T, P, H, W]`` -> ``[B, T, P, H, W]``.

    Example:
        >>> atk = ProbPGA(model, budget=50, steps=25, samples=4)
        >>> x_adv = atk(frames, labels)  # binary, (x_adv != frames).flatten(1).sum(1) <= 50
    """

    def __init__(self, model: torch.nn.Module, *, budget: int, steps: int = 25, samples: int = 4, alpha: float = 0.5,
                 seed: int = 0, add_only: bool = False) -> None:
        super().__init__("ProbPGA", model)
        self.budget, self.steps, self.samples = int(budget), int(steps), max(1, int(samples))
        self.alpha, self.seed, self.add_only = float(alpha), int(seed), bool(add_only)
        self.supported_mode = ["default"]

    @classmethod
    def from_params(cls, model: torch.nn.Module, eps: float, params: Dict[str, Any], n_classes: int,
                    eot_samples: int) -> "ProbPGA":
        """The registry's builder (:attr:`robust_snn.attacks.registry.AttackSpec.build`): one attack for budget ``eps``."""
        return cls(model, budget=int(eps), steps=int(params["steps"]), samples=int(params["samples"]),
                   alpha=float(params["alpha"]), seed=int(params["seed"]), add_only=bool(params.get("add_only", False)))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.budget == 0:
            return images.clone().detach().to(self.device).round()
        x, y, flat, allowed, gen, p, best, k = relaxed_start(self, images, labels, budget=self.budget,
                                                             add_only=self.add_only, seed=self.seed)
        step = self.alpha * self.budget ** 0.5
        for _ in range(self.steps):
            rows = torch.nonzero(~best.fooled).squeeze(1)
            if len(rows) == 0:
                break
            pr = p[rows]
            logit_p = torch.logit(pr.clamp(1e-6, 1 - 1e-6)).masked_fill(~allowed[rows], float("-inf"))
            grad = torch.zeros_like(pr)
            for _ in range(self.samples):
                u = torch.rand(pr.shape, generator=gen).to(x.device).clamp(1e-6, 1 - 1e-6)
                key = logit_p + torch.logit(u)  # > 0 with probability p
                # the sampled flips, at most the budget's largest keys
                cand = flip_top(x[rows], torch.sigmoid(key).masked_fill(key <= 0, 0.0), k[rows])
                with torch.enable_grad():
                    cand.requires_grad_(True)
                    logits = self.get_logits(cand)
                    (g,) = torch.autograd.grad(margins(logits, y[rows]).sum(), cand)
                cand = cand.detach()
                # straight-through: d(frame)/d(p) is the flip's direction, +1 (0 -> 1) or -1 (1 -> 0)
                gj = (-g.flatten(1) * (1 - 2 * flat[rows])).masked_fill(~allowed[rows], 0.0)
                # a success's flips are pruned in the order of p after a step along this sample's own gradient
                moved = pr + step * gj / gj.norm(dim=1, keepdim=True).clamp_min(1e-12)
                best.update(rows, cand, logits.detach(), y[rows], moved)
                grad += gj
            grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            p[rows] = project_capped(pr + step * grad, self.budget, allowed[rows])
        return relaxed_finish(self, best, x, y, p, k)  # SPAA's final candidate: the budget's most probable flips
