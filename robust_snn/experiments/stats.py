"""Confidence intervals for accuracies (kept here for existing imports; see :mod:`robust_snn.stats`)."""
from ..stats import wilson_interval

__all__ = ["wilson_interval"]
