"""L2 perturbations of images in [0, 1]."""
from __future__ import annotations

import math

import torch

from ..errors import RobustSNNError
from .base import ImageThreatModel


class L2Images(ImageThreatModel):
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
