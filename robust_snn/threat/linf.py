"""L∞ perturbations of images in [0, 1]."""
from __future__ import annotations

import math

import torch

from ..errors import RobustSNNError
from .base import ImageThreatModel


class LinfImages(ImageThreatModel):
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
