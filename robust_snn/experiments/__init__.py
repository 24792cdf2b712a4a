"""Declarative accuracy-vs-budget experiments (L∞ eps for image models, event budgets for event models):
TOML specs, a resumable runner, plots and reports."""
from .spec import ExperimentSpec, load_spec
from .stats import wilson_interval

__all__ = ["ExperimentSpec", "load_spec", "wilson_interval"]
