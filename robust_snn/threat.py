"""Threat models: which perturbations an attacker may make, measured how, on which inputs.

A :class:`ThreatModel` owns its budget's units and validation, the distance between a
clean and a perturbed input, the projection back into the budget, and the valid input
domain. Attacks name theirs (``AttackSpec.norm``); evaluation, checks and reports go
through the object, so a new threat model (the L0 event budget below, for neuromorphic
inputs) is one class here and one line in :data:`THREAT_MODELS`.

Shape: inputs ``[B, ...]``; distances ``[B]``.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from .errors import RobustSNNError


class ThreatModel:
    """Base class. Subclasses set the class attributes and implement the four methods."""

    #: key in :data:`THREAT_MODELS` and the ``norm`` of result rows
    name = ""
    #: what a budget counts
    units = ""
    description = ""

    def check_budget(self, eps: float) -> float:
        """The budget as a float, or a one-line error."""
        raise NotImplementedError

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample size of the perturbation ``x_adv - x`` in this threat model's units, ``[B]``."""
        raise NotImplementedError

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The nearest point (or a point no farther than the budget) to ``x_adv`` within ``eps`` of ``x``, in the domain."""
        raise NotImplementedError

    def in_domain(self, x: torch.Tensor) -> bool:
        """Whether every input is valid (images in [0, 1]; events in {0, 1})."""
        raise NotImplementedError

    def within(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float, *, tol: float = 1e-5) -> bool:
        """Every perturbation within the budget (``tol`` absorbs float rounding)."""
        return bool((self.distance(x_adv, x) <= eps + tol).all())

    def describe(self) -> Dict[str, str]:
        return {"units": self.units, "description": self.description}


class _ImageThreatModel(ThreatModel):
    """Perturbations of images, which stay in [0, 1]."""

    def in_domain(self, x: torch.Tensor) -> bool:
        return bool(x.min() >= 0) and bool(x.max() <= 1)


class LinfImages(_ImageThreatModel):
    """Every pixel moves by at most ``eps`` (pixel scale [0, 1]); images stay in [0, 1]."""

    name = "Linf"
    units = "largest pixel change, [0, 1] scale"
    description = "L∞ ball on images in [0, 1]"

    def check_budget(self, eps: float) -> float:
        e = float(eps)
        if not 0.0 <= e <= 1.0 or math.isnan(e):
            raise RobustSNNError(f"eps must be in [0, 1] (L∞ on the [0, 1] pixel scale), got {eps}")
        return e

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv - x).flatten(1).abs().max(1).values

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


class L2Images(_ImageThreatModel):
    """The perturbation's Euclidean norm is at most ``eps`` (pixel scale); images stay in [0, 1]."""

    name = "L2"
    units = "Euclidean norm of the pixel change, [0, 1] scale"
    description = "L2 ball on images in [0, 1]"

    def check_budget(self, eps: float) -> float:
        e = float(eps)
        if not e >= 0.0 or math.isinf(e):
            raise RobustSNNError(f"L2 eps must be a finite number >= 0, got {eps}")
        return e

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv - x).flatten(1).norm(dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        delta = x_adv - x
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        # clipping to [0, 1] after scaling only moves coordinates towards x (x is in [0, 1]): the norm can only shrink
        return (x + delta * torch.clamp(eps / norm, max=1.0)).clamp(0, 1)


class L0Events(ThreatModel):
    """At most ``eps`` events added or removed per sample, on binary event tensors.

    For neuromorphic inputs (``[B, T, P, H, W]`` spike/event tensors in {0, 1}): the
    budget counts flipped entries. :meth:`project` keeps the ``eps`` largest changes
    (ties broken by position), reverts the rest and rounds to {0, 1}.
    """

    name = "L0"
    units = "events added or removed (flipped entries)"
    description = "L0 budget on binary event tensors"

    def check_budget(self, eps: float) -> float:
        e = float(eps)
        if not e >= 0 or math.isinf(e) or not e.is_integer():
            raise RobustSNNError(f"an L0 event budget must be a whole number of events >= 0, got {eps}")
        return e

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_adv != x).flatten(1).sum(1).to(torch.float32)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        k = int(eps)
        change = (x_adv - x).flatten(1).abs()
        keep = torch.zeros_like(change, dtype=torch.bool)
        if k > 0:
            top = change.topk(min(k, change.shape[1]), dim=1)
            keep.scatter_(1, top.indices, top.values > 0)
        out = torch.where(keep, x_adv.flatten(1), x.flatten(1))
        return out.round().clamp(0, 1).view_as(x)

    def in_domain(self, x: torch.Tensor) -> bool:
        return bool(((x == 0) | (x == 1)).all())


#: threat models by name (``AttackSpec.norm``, the ``norm`` of result rows)
THREAT_MODELS: Dict[str, ThreatModel] = {t.name: t for t in (LinfImages(), L2Images(), L0Events())}


def get_threat_model(name: str) -> ThreatModel:
    """A threat model by name, or a one-line error listing them."""
    if name not in THREAT_MODELS:
        raise RobustSNNError(f"unknown threat model {name!r}; choose one of: {', '.join(THREAT_MODELS)}")
    return THREAT_MODELS[name]
