"""Bit-depth reduction (feature squeezing) with a straight-through (BPDA) backward."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..errors import RobustSNNError
from .base import Preprocessor


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, levels):  # type: ignore[override]
        return torch.round(x.clamp(0, 1) * levels) / levels

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None  # BPDA: the identity's gradient


class Quantize(Preprocessor):
    """Reduce each pixel to ``bits`` bits; the backward is the identity (BPDA).

    Shape: ``[B, C, H, W]`` -> ``[B, C, H, W]``, values on the grid ``k / (2**bits - 1)``.

    Reference: feature squeezing, Xu et al. 2018 (https://arxiv.org/abs/1704.01155);
    BPDA, Athalye et al. 2018 (https://arxiv.org/abs/1802.00420).
    """

    name = "quantize"
    differentiable = False

    def __init__(self, *, bits: int = 4) -> None:
        super().__init__()
        if not 1 <= int(bits) <= 8 or int(bits) != bits:
            raise RobustSNNError(f"quantize bits must be an integer in [1, 8], got {bits}")
        self.bits = int(bits)

    def params(self) -> Dict[str, Any]:
        return {"bits": self.bits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RoundSTE.apply(x, float(2**self.bits - 1))
