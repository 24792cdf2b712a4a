"""Attack suites: named cascades of (attack, gradient) stages.

A suite is run like AutoAttack (https://arxiv.org/abs/2003.01690): every stage attacks
only the samples that are still robust after all earlier stages, so the cost of a suite
falls as the model's robustness falls, and the final robust set is the per-sample worst
case over every stage. The stages of ``standard`` were chosen by measurement on the
shipped checkpoints (``benchmarks/suite_selection.py``; the README's "Standard suite"
section has the numbers): the cheapest cascade whose worst case stays within 0.5 points
of the union of every attack and every gradient choice robust-snn offers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..registry import Registry


@dataclass(frozen=True)
class Stage:
    """One stage of a suite.

    Attributes:
        attack: registry name (see :data:`robust_snn.attacks.ATTACKS`).
        gradient: surrogate spec or ``"rate"`` for the backward pass (``None``: the model's own).
        steps: iterations (``None``: the attack's default).
        queries: queries of a gradient-free attack (``None``: the attack's default).
        targets: target classes of a targeted attack (``None``: the attack's default).
        seed: added to the run's seed for this stage's random starts (``None``: the run's seed, so
            stages that see the same survivors start from the same points).
    """

    attack: str
    gradient: Optional[str] = None
    steps: Optional[int] = None
    queries: Optional[int] = None
    targets: Optional[int] = None
    seed: Optional[int] = None

    @property
    def label(self) -> str:
        """Short name used as the row label, e.g. ``apgd[fast_sigmoid:slope=5]``."""
        return self.attack if self.gradient is None else f"{self.attack}[{self.gradient}]"


@dataclass(frozen=True)
class Suite:
    """A named list of stages.

    Attributes:
        name: CLI name.
        stages: run in order.
        cascade: each stage attacks only samples still robust after the earlier ones
            (``False``: every stage attacks every clean-correct sample, as ``--attack`` does).
        claim: the printed robust accuracy is a robustness estimate (``False``: printed with ``warning``).
        description: one line for ``robust-snn info``.
        warning: printed above the results when ``claim`` is ``False``.
    """

    name: str
    stages: Tuple[Stage, ...]
    cascade: bool
    claim: bool
    description: str
    warning: str = ""


QUICK_WARNING = ("quick suite (FGSM + PGD-20 through the model's surrogate): a smoke test, NOT a robustness claim; "
                 "it overstates robustness by tens of points on the shipped models (use the default --suite standard)")
EVENTS_WARNING = ("events suite (greedy flips, SDA, PGA, probabilistic PGA, SpikeFool, random flips): NOT yet a robustness "
                  "claim: event attacks are young and were chosen on small models only; treat the printed numbers as upper "
                  "bounds")

#: The wide fast-sigmoid surrogate: the single gradient that finds most adversarial examples
#: on the shipped CSNNs (integer spike-count logits make narrow surrogates vanish).
WIDE = "fast_sigmoid:slope=5"

STANDARD_STAGES: Tuple[Stage, ...] = (
    Stage("apgd", WIDE),
    Stage("apgd"),  # the model's own (training) surrogate, or --surrogate
    Stage("apgd", "fast_sigmoid:slope=10"),
    Stage("apgd", "atan"),
    Stage("apgd", "assg"),
    Stage("apgd-dlr", WIDE),
    Stage("apgdt", WIDE, targets=3),
    Stage("square", None, queries=1000),
)
#: how many of the standard suite's first stages the ``validation`` suite keeps (the three that break most)
VALIDATION_STAGES = 3
VALIDATION_WARNING = ("validation suite (the standard suite's first three APGD-CE stages): a fast screen for model "
                      "selection, NOT a robustness claim; report the standard suite")

SUITES: Registry[Suite] = Registry("suite", {
    s.name: s
    for s in [
        Suite(
            "standard",
            STANDARD_STAGES,
            cascade=True,
            claim=True,
            description="cascade of APGD-CE through five gradients (wide fast sigmoid, the model's own surrogate, fast "
                        "sigmoid slope 10, atan, the adaptive-sharpness ASSG), APGD-DLR and targeted APGD-DLR (top 3 "
                        "classes) through the wide fast sigmoid, then gradient-free Square (1,000 queries) on the survivors "
                        "as the masking check",
        ),
        Suite(
            "validation",
            STANDARD_STAGES[:VALIDATION_STAGES],
            cascade=True,
            claim=False,
            description="the standard suite's first three stages (APGD-CE through the wide fast sigmoid, the model's own "
                        "surrogate and fast sigmoid slope 10): what adversarial training validates every epoch with to keep "
                        "the best epoch; a fast screen, not a robustness claim",
            warning=VALIDATION_WARNING,
        ),
        Suite(
            "quick",
            (Stage("fgsm"), Stage("pgd")),
            cascade=False,
            claim=False,
            description="FGSM and PGD-20 through the model's own surrogate: a smoke test, not a robustness claim",
            warning=QUICK_WARNING,
        ),
        Suite(
            "events",
            (Stage("flip-greedy"), Stage("sda"), Stage("pga"), Stage("pga-prob"), Stage("spikefool"), Stage("flip-random")),
            cascade=True,
            claim=False,
            description="for event models (event budgets, --budget; --threat l0 or add-only): cascade of greedy "
                        "gradient-guided flips (cheap, few flips), SDA (flips proposed by the gradient, confirmed by forward "
                        "passes, pruned), PGA (50 steps), probabilistic PGA (25 steps x 4 samples) and SpikeFool (minimum "
                        "L0), then gradient-free random flips on the survivors as the masking check; the default for models "
                        "that take event tensors",
            warning=EVENTS_WARNING,
        ),
    ]
}, normalize=lambda n: str(n).strip().lower())

DEFAULT_SUITE = "standard"
#: the default suite of models that take event tensors (``input = "events"``)
EVENTS_SUITE = "events"


def get_suite(name: str) -> Suite:
    """Suite by CLI name."""
    return SUITES.get(name)


def default_suite(model: object) -> str:
    """The suite a model is attacked with when none is named: ``events`` for event models, else ``standard``."""
    return EVENTS_SUITE if getattr(model, "events", False) else DEFAULT_SUITE
