"""Gaussian-blur input preprocessing (a classic denoising defense; differentiable)."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F

from ..errors import RobustSNNError
from .base import Preprocessor


class GaussianBlur(Preprocessor):
    """Depthwise Gaussian blur with reflect padding; exact gradients, so attacks see through it.

    Shape: ``[B, C, H, W]`` -> ``[B, C, H, W]`` (values stay in [0, 1]: the kernel is a convex combination).

    Reference: input-transformation defenses, Guo et al. 2018 (https://arxiv.org/abs/1711.00117).
    """

    name = "blur"

    def __init__(self, *, sigma: float = 1.0, kernel: int = 5) -> None:
        super().__init__()
        if not sigma > 0:
            raise RobustSNNError(f"blur sigma must be positive, got {sigma}")
        if kernel < 1 or kernel % 2 == 0:
            raise RobustSNNError(f"blur kernel size must be a positive odd integer, got {kernel}")
        self.sigma = float(sigma)
        self.kernel = int(kernel)
        r = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
        g = torch.exp(-(r**2) / (2 * sigma**2))
        g = g / g.sum()
        self.register_buffer("weight", (g[:, None] * g[None, :])[None, None])

    def params(self) -> Dict[str, Any]:
        return {"sigma": self.sigma, "kernel": self.kernel}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        p = self.kernel // 2
        mode = "reflect" if min(x.shape[-2:]) > p else "replicate"
        xp = F.pad(x, (p, p, p, p), mode=mode) if p else x
        return F.conv2d(xp, self.weight.expand(c, 1, -1, -1).to(x.dtype), groups=c).clamp(0, 1)
