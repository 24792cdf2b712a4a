"""Declarative accuracy-vs-epsilon experiments: TOML specs, a resumable runner, plots and reports."""
from .spec import ExperimentSpec, load_spec
from .stats import wilson_interval

__all__ = ["ExperimentSpec", "load_spec", "wilson_interval"]
