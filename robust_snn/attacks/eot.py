"""Expectation over Transformation for stochastic encoders.

https://arxiv.org/abs/1802.00420 (Athalye et al., "Obfuscated Gradients Give a False Sense of Security").
"""
from __future__ import annotations

import torch
from torch import nn


class EOT(nn.Module):
    """Average a model's logits over ``samples`` independent encoder draws.

    The batch is replicated ``samples`` times and simulated in one call, so the
    input gradient is the average over draws. With ``samples=1`` it is the
    model itself.

    Shape: ``[B, C, H, W]`` -> ``[B, K]``.
    """

    def __init__(self, model: nn.Module, *, samples: int) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.model = model
        self.samples = int(samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.samples == 1:
            return self.model(x)
        b = x.shape[0]
        logits = self.model(x.repeat(self.samples, *([1] * (x.dim() - 1))))
        return logits.view(self.samples, b, -1).mean(0)
