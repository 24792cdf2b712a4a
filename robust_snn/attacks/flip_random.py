"""Random event flips within an L0 budget: the gradient-free baseline of the event attacks."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torchattacks


class RandomFlip(torchattacks.attack.Attack):
    """Try ``trials`` random sets of ``budget`` flipped entries per sample; keep the first that fools the model.

    Uses only the model's outputs (the masking check for event attacks: if it beats the
    gradient attacks, their gradients are not to be trusted). Exact L0: at most ``budget``
    entries differ from the input, and the result is binary. With ``add_only`` each trial
    adds ``budget`` events at random empty entries (fewer where fewer are empty) and
    removes none.

    Args:
        model: classifier on event tensors ``[B, T, P, H, W]`` in {0, 1}.
        budget: entries flipped per trial.
        trials: random trials per sample.
        seed: the trials' random generator seed.
        add_only: only add events (0 -> 1), never remove one (the ``add-only`` threat model).

    Shape: ``[B, T, P, H, W]`` -> ``[B, T, P, H, W]``.
    """

    def __init__(self, model: torch.nn.Module, *, budget: int, trials: int = 20, seed: int = 0, add_only: bool = False) -> None:
        super().__init__("RandomFlip", model)
        self.budget, self.trials, self.seed, self.add_only = int(budget), int(trials), int(seed), bool(add_only)
        self.supported_mode = ["default"]

    @classmethod
    def from_params(cls, model: torch.nn.Module, eps: float, params: Dict[str, Any], n_classes: int,
                    eot_samples: int) -> "RandomFlip":
        """The registry's builder (:attr:`robust_snn.attacks.registry.AttackSpec.build`): one attack for budget ``eps``."""
        return cls(model, budget=int(eps), trials=int(params["trials"]), seed=int(params["seed"]),
                   add_only=bool(params.get("add_only", False)))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone().detach().to(self.device).round()
        y = labels.clone().detach().to(self.device)
        best = x.clone()
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        n = x[0].numel()
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        if self.budget == 0:
            return best
        for _ in range(self.trials):
            todo = torch.nonzero(~fooled).squeeze(1)
            if len(todo) == 0:
                break
            draw = torch.rand((len(todo), n), generator=gen)
            cand = x[todo].flatten(1).clone()
            if self.add_only:  # the budget's random empty entries get an event (events score -1: never chosen before an empty one)
                idx = draw.masked_fill((cand == 1).cpu(), -1.0).topk(min(self.budget, n), dim=1).indices.to(x.device)
                cand.scatter_(1, idx, torch.ones_like(idx, dtype=cand.dtype))
            else:
                idx = draw.topk(min(self.budget, n), dim=1).indices.to(x.device)
                cand.scatter_(1, idx, 1 - cand.gather(1, idx))
            cand = cand.view(len(todo), *x.shape[1:])
            wrong = self.get_logits(cand).argmax(1) != y[todo]
            best[todo[wrong]] = cand[wrong]
            fooled[todo[wrong]] = True
        return best
