"""Adaptive PGD against the temporal-consistency detector.

The attacker knows the detector (adaptive evaluation, Tramèr et al. 2020,
https://arxiv.org/abs/2002.08347; two-phase loss as in Carlini & Wagner 2017,
"Adversarial examples are not easily detected", https://arxiv.org/abs/1705.07263):
while an input is still classified correctly it maximizes the cross-entropy of
the running vote at *every* time step (so the wrong decision comes early and
stays, as clean decisions do); once misclassified it minimizes the detector's
differentiable score under a hinge that keeps it misclassified. It returns, per
input, the best point found: misclassified and undetected first, then
misclassified with the lowest detector score.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
import torchattacks

from ..errors import RobustSNNError
from ..pgd import linf_step, pgd_alpha, uniform_start


class ConsistencyPGD(torchattacks.attack.Attack):
    """L-inf PGD that fools the classifier and evades the temporal-consistency detector.

    Args:
        model: a :class:`~robust_snn.defenses.Defended` with a
            :class:`~robust_snn.defenses.TemporalConsistencyDetector`.
        eps: L-inf budget on the [0, 1] scale.
        alpha: step size.
        steps: iterations.
        lam: weight of the detector score in the second phase (relative to the hinge).
        random_start: start from a uniform point in the ball.

    Shape: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, model: torch.nn.Module, *, eps: float, alpha: float, steps: int = 20, lam: float = 1.0,
                 random_start: bool = True) -> None:
        super().__init__("ConsistencyPGD", model)
        det = getattr(model, "detector", None)
        if det is None or not hasattr(det, "soft_score"):
            raise RobustSNNError("pgd-tcc needs a model with a temporal-consistency detector (--detector tcc)")
        self.eps, self.alpha, self.steps, self.lam = float(eps), float(alpha), int(steps), float(lam)
        self.random_start = bool(random_start)
        self.supported_mode = ["default"]

    @classmethod
    def from_params(cls, model: torch.nn.Module, eps: float, params: Dict[str, Any], n_classes: int,
                    eot_samples: int) -> "ConsistencyPGD":
        """The registry's builder (:attr:`robust_snn.attacks.registry.AttackSpec.build`): one attack for budget ``eps``."""
        return cls(model, eps=eps, alpha=pgd_alpha(eps, params), steps=int(params["steps"]), lam=float(params["lam"]),
                   random_start=bool(params["random_start"]))

    def _objective(self, x: torch.Tensor, y: torch.Tensor):
        """Per-sample objective to maximize, plus (hard score, misclassified) of ``x``."""
        det = self.model.detector
        spk = det._spikes(self.model.preprocess_input(x))  # [R, T, B, K]
        counts = spk.mean(0).cumsum(0)  # [T, B, K]
        t_steps, b, k = counts.shape
        ce_t = F.cross_entropy(counts.reshape(t_steps * b, k), y.repeat(t_steps), reduction="none").view(t_steps, b).mean(0)
        final = counts[-1]
        true = final.gather(1, y[:, None]).squeeze(1)
        other = final.masked_fill(F.one_hot(y, k).bool(), float("-inf")).max(1).values
        wrong = final.argmax(1) != y
        soft = det._combine(det.features_from_spikes(spk, soft=True))
        phase2 = -self.lam * soft - 10.0 * F.relu(true - other + 1.0)
        objective = torch.where(wrong, phase2, ce_t)
        with torch.no_grad():
            hard = det._combine(det.features_from_spikes(spk.detach(), soft=False))
        return objective, hard, wrong

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        thr = float(self.model.detector.threshold)
        best = images.clone()
        best_key = torch.full((len(images),), float("inf"), device=self.device)  # lower is better
        adv = images.clone()
        if self.random_start:
            adv = uniform_start(adv, self.eps)
        for i in range(self.steps + 1):
            adv.requires_grad_(True)
            obj, hard, wrong = self._objective(adv, labels)
            with torch.no_grad():  # rank: undetected success < detected success (by score) < failure
                key = torch.where(wrong, torch.where(hard > thr, hard, hard - 1e6), torch.full_like(hard, float("inf")))
                better = key < best_key
                best[better] = adv.detach()[better]
                best_key[better] = key[better]
            if i == self.steps:
                break
            g = torch.autograd.grad(obj.sum(), adv)[0]
            adv = linf_step(adv, g, images, eps=self.eps, alpha=self.alpha)
        return best.detach()
