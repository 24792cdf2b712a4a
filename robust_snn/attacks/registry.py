"""Registry of attacks by CLI name, built on torchattacks, with literature defaults.

Every builder takes the model to attack (already wrapped for EOT when its
encoder is stochastic), the budget ``eps`` (L∞ on the [0, 1] scale, the L2
radius, or the L0 event count), the attack's parameters, the number of classes
and the EOT sample count, and returns a :class:`torchattacks.Attack`.

A new attack is one new file in this package (a :class:`torchattacks.attack.Attack`
subclass with a ``from_params`` classmethod as its builder, as :class:`~.cw.CW` and
:class:`~.flip_greedy.GreedyFlip` have) plus its import and one :class:`AttackSpec` entry
in :data:`ATTACKS`; an attack taken from torchattacks needs only its entry, with a
builder function here.

Event attacks (norm ``"L0"``) honour the threat model of the run: their builder reads
``params.get("add_only", False)`` and, when true, only adds events (0 -> 1 entries);
:func:`~robust_snn.attacks.evaluate` sets it under ``threat="add-only"``. Their defaults
list ``add_only`` (``False``) so that ``name:add_only=true`` parses too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torchattacks

from ..errors import RobustSNNError
from ..pgd import PGD_STEP_SCALE, pgd_alpha
from ..registry import Registry
from ..specs import split_spec_list as split_attack_list, parse_params, split_spec
from ..threat import ThreatModel, get_threat_model
from .apgd import APGD
from .apgdt import APGDT
from .consistency_pgd import ConsistencyPGD
from .cw import CW
from .flip_greedy import GreedyFlip
from .flip_random import RandomFlip
from .pga import PAPER as PGA_PAPER, PGA
from .pga_prob import ProbPGA
from .sda import SDA
from .spikefool import SpikeFool


@dataclass(frozen=True)
class AttackSpec:
    """How to build one attack.

    Attributes:
        name: CLI name.
        norm: the name of its threat model in :data:`robust_snn.threat.THREAT_MODELS` (``"Linf"``, ``"L2"``, or
            ``"L0"`` for event attacks, which also run under ``"add-only"`` with ``params["add_only"]``).
        description: one line for ``robust-snn info``.
        defaults: default hyperparameters (shown by ``info``).
        build: ``(model, eps, params, n_classes, eot_samples) -> torchattacks.Attack`` (for
            robust-snn's own attacks, the class's ``from_params``).
        iterative: several gradient steps (vs single-step FGSM).
        gradient_free: uses only model outputs (masking check).
        minimum_norm: finds a minimal perturbation (CW, DeepFool); examples
            beyond the budget count as failures.
        uses_own_eot: averages gradients over encoder draws itself (EOTPGD),
            so it gets the unwrapped model.
        needs_detector: attacks a :class:`~robust_snn.defenses.Defended` model's detector too.
        paper: reference.
    """

    name: str
    norm: str
    description: str
    defaults: Dict[str, Any]
    build: Callable[..., torchattacks.attack.Attack]
    iterative: bool = True
    gradient_free: bool = False
    minimum_norm: bool = False
    uses_own_eot: bool = False
    needs_detector: bool = False
    paper: str = ""

    @property
    def threat(self) -> ThreatModel:
        """The threat model of :attr:`norm` (budget units and checks, distance, projection, input domain)."""
        return get_threat_model(self.norm)


#: the PGD-family step size from an attack's parameters
_alpha = pgd_alpha


def _fgsm(model, eps, p, n_classes, eot):
    return torchattacks.FGSM(model, eps=eps)


def _pgd(model, eps, p, n_classes, eot):
    return torchattacks.PGD(model, eps=eps, alpha=_alpha(eps, p), steps=int(p["steps"]), random_start=bool(p["random_start"]))


def _pgdl2(model, eps, p, n_classes, eot):
    if eps == 0:  # torchattacks' PGDL2 projects with eps / ||delta|| = 0/0 -> NaN images
        return torchattacks.VANILA(model)
    return torchattacks.PGDL2(model, eps=eps, alpha=_alpha(eps, p), steps=int(p["steps"]), random_start=bool(p["random_start"]))


def _eotpgd(model, eps, p, n_classes, eot):
    return torchattacks.EOTPGD(
        model, eps=eps, alpha=_alpha(eps, p), steps=int(p["steps"]), eot_iter=max(1, int(eot)), random_start=bool(p["random_start"])
    )


def _apgd(loss: str) -> Callable[..., torchattacks.attack.Attack]:
    def build(model, eps, p, n_classes, eot):
        # early exit only when a misclassification is final: a stochastic model's prediction is noisy
        return APGD(model, eps=eps, steps=int(p["steps"]), seed=int(p["seed"]), loss=loss, early_exit=eot <= 1)

    return build


def _apgdt(model, eps, p, n_classes, eot):
    # the top-k classes by logit, as in AutoAttack
    return APGDT(model, eps=eps, steps=int(p["steps"]), seed=int(p["seed"]), n_classes=n_classes, targets=int(p["targets"]),
                 early_exit=eot <= 1)


def _square(model, eps, p, n_classes, eot):
    return torchattacks.Square(model, norm="Linf", eps=eps, n_queries=int(p["queries"]), n_restarts=1, p_init=float(p["p_init"]), loss="margin", seed=int(p["seed"]))


def _deepfool(model, eps, p, n_classes, eot):
    return torchattacks.DeepFool(model, steps=int(p["steps"]), overshoot=float(p["overshoot"]))


def _autoattack(model, eps, p, n_classes, eot):
    return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=int(p["seed"]))


_PGD_DEFAULTS = {"steps": 20, "step_scale": PGD_STEP_SCALE, "alpha": None, "random_start": True}

#: attacks by CLI name (typed names are matched stripped and lower-cased)
ATTACKS: Registry[AttackSpec] = Registry("attack", {
    spec.name: spec
    for spec in [
        AttackSpec("fgsm", "Linf", "single-step fast gradient sign", {}, _fgsm, iterative=False,
                   paper="https://arxiv.org/abs/1412.6572"),
        AttackSpec("pgd", "Linf", "projected gradient descent, random start", dict(_PGD_DEFAULTS), _pgd,
                   paper="https://arxiv.org/abs/1706.06083"),
        AttackSpec("pgd-tcc", "Linf", "adaptive PGD vs the tcc detector: all time windows + detector score",
                   {**_PGD_DEFAULTS, "lam": 1.0}, ConsistencyPGD.from_params, uses_own_eot=True, needs_detector=True,
                   paper="https://arxiv.org/abs/2002.08347"),
        AttackSpec("pgdl2", "L2", "PGD in the L2 ball, random start", dict(_PGD_DEFAULTS), _pgdl2,
                   paper="https://arxiv.org/abs/1706.06083"),
        AttackSpec("eotpgd", "Linf", "PGD with gradients averaged over encoder draws", dict(_PGD_DEFAULTS), _eotpgd,
                   uses_own_eot=True, paper="https://arxiv.org/abs/1802.00420"),
        AttackSpec("apgd", "Linf", "Auto-PGD, cross-entropy loss", {"steps": 100, "seed": 0}, _apgd("ce"),
                   paper="https://arxiv.org/abs/2003.01690"),
        AttackSpec("apgd-dlr", "Linf", "Auto-PGD, DLR loss (scale invariant)", {"steps": 100, "seed": 0}, _apgd("dlr"),
                   paper="https://arxiv.org/abs/2003.01690"),
        AttackSpec("apgdt", "Linf", "targeted Auto-PGD (DLR) towards the top-k other classes", {"steps": 100, "seed": 0, "targets": 9}, _apgdt,
                   paper="https://arxiv.org/abs/2003.01690"),
        AttackSpec("square", "Linf", "Square attack, gradient-free (masking check)", {"queries": 5000, "p_init": 0.8, "seed": 0},
                   _square, gradient_free=True, paper="https://arxiv.org/abs/1912.00049"),
        AttackSpec("cw", "L2", "Carlini-Wagner L2 (minimum norm; success only within eps)",
                   {"steps": 100, "c": 1.0, "kappa": 1.0, "lr": 0.05, "search_steps": 5}, CW.from_params, minimum_norm=True,
                   paper="https://arxiv.org/abs/1608.04644"),
        AttackSpec("deepfool", "L2", "DeepFool (minimum norm; success only within eps)", {"steps": 50, "overshoot": 0.02},
                   _deepfool, minimum_norm=True, paper="https://arxiv.org/abs/1511.04599"),
        AttackSpec("pga", "L0", "event frames: projected gradient ascent on relaxed frames, rounded within an L0 budget (exact)",
                   {"steps": 50, "alpha": 0.5, "seed": 0, "add_only": False}, PGA.from_params, paper=PGA_PAPER),
        AttackSpec("pga-prob", "L0", "event frames: probabilistic PGA, best sampled binary frame within an L0 budget (exact)",
                   {"steps": 25, "samples": 4, "alpha": 0.5, "seed": 0, "add_only": False}, ProbPGA.from_params, paper=PGA_PAPER),
        AttackSpec("sda", "L0", "event frames: SDA, gradient-proposed flips confirmed by forward passes, then pruned (exact L0)",
                   {"steps": 50, "candidates": 10, "max_candidates": 50, "seed": 0, "add_only": False},
                   SDA.from_params, paper="https://arxiv.org/abs/2503.03272"),
        AttackSpec("spikefool", "L0", "event frames: SpikeFool, DeepFool boundary + SparseFool flips rounded to binary "
                   "(minimum L0; success only within the budget)",
                   {"steps": 20, "lam": 3.0, "overshoot": 0.02, "deepfool_steps": 50, "prune": True, "add_only": False},
                   SpikeFool.from_params, minimum_norm=True, paper="https://arxiv.org/abs/2110.02929"),
        AttackSpec("flip-greedy", "L0", "event frames: greedy gradient-guided flips within an L0 budget (exact)",
                   {"per_step": 5, "add_only": False}, GreedyFlip.from_params, paper="https://arxiv.org/abs/2503.03272"),
        AttackSpec("flip-random", "L0", "event frames: random flips within an L0 budget, gradient-free (masking check)",
                   {"trials": 20, "seed": 0, "add_only": False}, RandomFlip.from_params, gradient_free=True),
        AttackSpec("autoattack", "Linf", "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square", {"seed": 0}, _autoattack,
                   paper="https://arxiv.org/abs/2003.01690"),
    ]
}, normalize=lambda name: name.strip().lower())


def get_spec(name: str) -> AttackSpec:
    """Spec of an attack by CLI name, or a one-line error listing them."""
    return ATTACKS.get(name)


def parse_attack(text: str) -> Tuple[AttackSpec, Dict[str, Any]]:
    """``"pgd:steps=50,step_scale=2"`` -> ``(ATTACKS["pgd"], {"steps": 50, "step_scale": 2.0})``.

    The same ``name:key=value`` language as surrogates and defenses (:mod:`robust_snn.specs`);
    the allowed keys are the attack's hyperparameters (its ``defaults``).
    """
    name, raw = split_spec(text, what="attack")
    spec = get_spec(name)
    params = parse_params(name, raw, spec.build, spec=text, what="attack", allowed=dict(spec.defaults))
    for k, v in params.items():
        if k in ("steps", "queries", "targets", "samples", "trials", "per_step", "candidates", "max_candidates",
                 "deepfool_steps") and (not isinstance(v, int) or v < 1):
            raise RobustSNNError(f"attack parameter {k} in {text!r} must be an integer >= 1, got {v}")
        if k == "seed" and v < 0:
            raise RobustSNNError(f"attack parameter seed in {text!r} must be >= 0, got {v}")
        if k != "seed" and isinstance(v, float) and not v > 0:
            raise RobustSNNError(f"attack parameter {k} in {text!r} must be positive, got {v:g}")
    return spec, params


def event_attack_names() -> List[str]:
    """The names of the event attacks (norm ``"L0"``), in registry order."""
    return [name for name, spec in ATTACKS.items() if spec.norm == "L0"]


def attack_params(spec: AttackSpec, *, steps: Optional[int] = None, queries: Optional[int] = None, seed: Optional[int] = None) -> Dict[str, Any]:
    """Defaults of ``spec`` with the run's overrides applied (only where the attack has that knob)."""
    p = dict(spec.defaults)
    if steps is not None:
        if steps < 1:
            raise RobustSNNError(f"--steps must be >= 1, got {steps}")
        if "steps" in p:
            p["steps"] = steps
    if queries is not None:
        if queries < 1:
            raise RobustSNNError(f"--queries must be >= 1, got {queries}")
        if "queries" in p:
            p["queries"] = queries
    if seed is not None and "seed" in p:
        p["seed"] = seed
    return p


def build_attack(spec: AttackSpec, model: torch.nn.Module, eps: float, params: Dict[str, Any], *, n_classes: int, eot_samples: int = 1):
    """Instantiate the torchattacks attack for one budget."""
    return spec.build(model, float(eps), params, n_classes, eot_samples)
