"""L0 budgets on binary event tensors: the number of events added or removed."""
from __future__ import annotations

import math

import torch

from ..errors import RobustSNNError
from .base import ThreatModel


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
