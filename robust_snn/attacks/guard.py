"""A wrapper that notices non-finite input gradients during an attack.

``sign(NaN)`` is 0 in PyTorch, so a sign-gradient attack through a surrogate that returns
NaN silently stops moving, and the model looks perfectly robust. Every attack in
:func:`robust_snn.attacks.evaluate` sees the model through :class:`GradGuard`, which
records whether any input gradient was NaN or inf; the evaluation then stops with a clear error.
"""
from __future__ import annotations

import torch
from torch import nn


class GradGuard(nn.Module):
    """Transparent wrapper: ``forward(x) = model(x)``; flags non-finite gradients w.r.t. ``x``.

    Shape: ``[B, ...]`` -> the model's output.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.nonfinite = False

    def __getattr__(self, name: str):
        """Everything else (``detector``, ``score``, ``encoder``, ...) is the wrapped model's, so attacks that
        read model attributes (pgd-tcc reads the detector) see through the guard."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def _hook(self, grad: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(grad).all()):
            self.nonfinite = True
        return grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            x.register_hook(self._hook)
        return self.model(x)
