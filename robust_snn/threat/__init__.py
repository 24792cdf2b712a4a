"""Threat models: which perturbations an attacker may make, measured how, on which inputs.

A :class:`ThreatModel` owns its budget's units and validation, the distance between a
clean and a perturbed input, the projection back into the budget, and the valid input
domain. Attacks name theirs (``AttackSpec.norm``); evaluation, checks and reports go
through the object. One file per threat model; a new one is its file (a subclass of
:class:`ThreatModel` with a ``name``) plus its import and one entry in :data:`THREAT_MODELS`.
"""
from __future__ import annotations

from ..registry import Registry
from .add_only import AddOnlyEvents
from .base import ImageThreatModel, ThreatModel
from .l0 import L0Events
from .l2 import L2Images
from .linf import LinfImages

#: threat models by name (``AttackSpec.norm``, the ``norm`` of result rows; ``add-only`` is the norm of event
#: attacks' rows under ``evaluate(..., threat="add-only")``)
THREAT_MODELS: Registry[ThreatModel] = Registry("threat model", {t.name: t for t in (
    LinfImages(),
    L2Images(),
    L0Events(),
    AddOnlyEvents(),
)})


def get_threat_model(name: str) -> ThreatModel:
    """A threat model by name, or a one-line error listing them."""
    return THREAT_MODELS.get(name)


__all__ = ["THREAT_MODELS", "AddOnlyEvents", "ImageThreatModel", "L0Events", "L2Images", "LinfImages", "ThreatModel", "get_threat_model"]
