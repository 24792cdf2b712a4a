"""Add-only budgets on binary event tensors: the attacker may inject events but never erase one."""
from __future__ import annotations

import torch

from .l0 import L0Events


class AddOnlyEvents(L0Events):
    """At most ``eps`` events added per sample (0 -> 1 entries), none removed, on binary event tensors.

    The threat of an attacker who can inject spurious events into a sensor's stream (a
    flickering light, a laser spot, a compromised link) but cannot suppress the real ones.
    Every add-only perturbation is an L0 perturbation of the same size, so the budget, its
    validation and the input domain are :class:`~robust_snn.threat.l0.L0Events`'; what differs:

    * :meth:`distance` counts added events, and is ``inf`` for a perturbation that removes
      any event (it is outside this threat model at every budget), so :meth:`within` fails;
    * :meth:`project` reverts every removal, keeps the ``eps`` largest additions (ties broken
      by position) and rounds to {0, 1}.

    Shape: inputs ``[B, T, P, H, W]`` (any ``[B, ...]``); distances ``[B]``.
    """

    name = "add-only"
    units = "events added (0 -> 1 entries; removing an event is not allowed)"
    description = "add-only budget on binary event tensors: inject events, never erase one"

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        added = (x_adv > x).flatten(1).sum(1).to(torch.float32)
        removed = (x_adv < x).flatten(1).any(1)
        return added.masked_fill(removed, float("inf"))

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        added = (x_adv.clamp(0, 1) - x).clamp_min(0)  # removals (and values above 1) contribute nothing
        return super().project(x + added, x, eps)
