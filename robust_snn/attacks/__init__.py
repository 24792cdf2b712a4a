"""Adversarial attacks on spiking classifiers (built on torchattacks).

See :func:`evaluate` for the Python API behind ``robust-snn attack``; by default it runs
the ``standard`` suite (:data:`SUITES`).
"""
from .eot import EOT
from .evaluate import evaluate, margins
from .registry import ATTACKS, AttackSpec, build_attack, get_spec
from .result import EvaluationResult, result_key
from .suite import SUITES, Stage, Suite, get_suite

__all__ = ["ATTACKS", "AttackSpec", "EOT", "EvaluationResult", "SUITES", "Stage", "Suite", "build_attack", "evaluate", "get_spec", "get_suite", "margins", "result_key"]
