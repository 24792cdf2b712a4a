"""Background-activity filter for event frames, with a straight-through (BPDA) backward."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch.nn import functional as F

from ..errors import RobustSNNError
from .base import Preprocessor


class _MaskSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep):  # type: ignore[override]
        return x * keep

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None  # BPDA: the identity's gradient, so removed events still get a gradient


class Denoise(Preprocessor):
    """Remove events with no event at a neighbouring pixel in the same or the previous ``window`` time bins.

    The frame version of tonic's ``transforms.Denoise`` (a background-activity filter: an
    isolated event is sensor noise): an event at ``(t, p, y, x)`` is kept if any of the 8
    neighbouring pixels, of either polarity, has an event in bins ``t - window ... t``. On
    binned frames the same bin counts, since events within one bin have no order. The
    backward is the identity (BPDA), so attacks through it stay white-box.

    Shape: ``[B, T, P, H, W]`` binary -> ``[B, T, P, H, W]`` binary (a subset of the events).

    Reference: tonic.transforms.Denoise (https://tonic.readthedocs.io); BPDA, Athalye et al.
    2018 (https://arxiv.org/abs/1802.00420).
    """

    name = "denoise"
    differentiable = False
    events = True

    def __init__(self, *, window: int = 1) -> None:
        super().__init__()
        if int(window) != window or not 0 <= int(window) <= 1000:
            raise RobustSNNError(f"denoise window must be a whole number of time bins in [0, 1000], got {window}")
        self.window = int(window)

    def params(self) -> Dict[str, Any]:
        return {"window": self.window}

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, 1, H, W]`` bool: events at these positions survive the filter."""
        if x.dim() != 5:
            raise RobustSNNError(f"denoise filters event tensors [B, T, P, H, W], got shape {tuple(x.shape)}")
        b, t, _, h, w = x.shape
        with torch.no_grad():
            active = x.detach().amax(2).reshape(b * t, 1, h, w).float()
            ring = torch.ones(1, 1, 3, 3, device=x.device)
            ring[0, 0, 1, 1] = 0  # the 8 neighbours, not the pixel itself
            nb = F.conv2d(active, ring, padding=1).reshape(b, t, h, w)
            # neighbours in bins t - window .. t: a running sum over the time axis
            cum = nb.cumsum(1)
            before = torch.zeros_like(cum)
            if self.window + 1 < t:
                before[:, self.window + 1:] = cum[:, : t - self.window - 1]
            return ((cum - before) > 0).unsqueeze(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MaskSTE.apply(x, self.keep_mask(x).to(x.dtype))
