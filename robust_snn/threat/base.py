"""The threat-model interface: budget units and checks, distance, projection, input domain.

Shape: inputs ``[B, ...]``; distances ``[B]``.
"""
from __future__ import annotations

from typing import Dict

import torch


class ThreatModel:
    """Base class. Subclasses set the class attributes and implement the four methods."""

    #: key in :data:`robust_snn.threat.THREAT_MODELS` and the ``norm`` of result rows
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
        """Budget units and a one-line description (for ``robust-snn info``)."""
        return {"units": self.units, "description": self.description}


class ImageThreatModel(ThreatModel):
    """Perturbations of images, which stay in [0, 1]."""

    def in_domain(self, x: torch.Tensor) -> bool:
        return bool(x.min() >= 0) and bool(x.max() <= 1)
