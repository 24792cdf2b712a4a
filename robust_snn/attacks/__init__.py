"""Adversarial attacks on spiking classifiers (built on torchattacks).

See :func:`evaluate` for the Python API behind ``robust-snn attack``.
"""
from .eot import EOT
from .evaluate import evaluate, margins
from .registry import ATTACKS, AttackSpec, build_attack, get_spec

__all__ = ["ATTACKS", "AttackSpec", "EOT", "build_attack", "evaluate", "get_spec", "margins"]
