"""Sanity checks in the spirit of AutoAttack's ``checks.py`` and Carlini et al.,
"On Evaluating Adversarial Robustness" (https://arxiv.org/abs/1902.06705).

Pre-run checks warn about a randomized model, a model in training mode and
all-zero input gradients; post-run checks validate the results.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..encoders import is_stochastic

TOL_BOUND = 1e-5


class RobustnessWarning(UserWarning):
    """An evaluation result may be unreliable."""


def _check(name: str, passed: bool, detail: str) -> Dict[str, Any]:
    if not passed:
        warnings.warn(f"sanity check failed: {name}: {detail}", RobustnessWarning, stacklevel=3)
    return {"name": name, "passed": bool(passed), "detail": detail}


def check_model(model: torch.nn.Module, attacked: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eot_samples: int,
                was_training: bool, gradients: Sequence[Optional[str]] = (None,)) -> List[Dict[str, Any]]:
    """Checks before attacking: training mode, randomness, zero gradients (for every gradient choice)."""
    from ..neurons import use_surrogate

    out = []
    out.append(_check("model in eval mode", not was_training,
                      "the model is in training mode (dropout/batch-norm change outputs); call model.eval()" if was_training else "ok"))
    stochastic = is_stochastic(model)
    if stochastic:
        msg = f"the model is randomized (stochastic encoder); gradients are averaged over {eot_samples} draws (EOT) and accuracy over several forward samples"
        warnings.warn(msg, RobustnessWarning, stacklevel=2)
        out.append({"name": "randomized model uses EOT", "passed": eot_samples > 1, "detail": msg})
        if eot_samples <= 1:
            _check("randomized model uses EOT", False, "stochastic encoder attacked with --eot-samples 1: gradients are single noisy draws")
    zero_by_gradient = {}
    all_zero = None
    for g in gradients:
        xg = x.clone().requires_grad_(True)
        with use_surrogate(model, g), torch.enable_grad():
            loss = F.cross_entropy(attacked(xg), y)
            grad = torch.autograd.grad(loss, xg)[0]
        if not bool(torch.isfinite(grad).all()):
            from ..errors import RobustSNNError

            raise RobustSNNError(f"the input gradients through the gradient {g or 'of the model'} are NaN or inf: every "
                                 "gradient attack would be meaningless; choose another --surrogate (or check the model's weights)")
        zero = grad.flatten(1).abs().sum(1) == 0
        zero_by_gradient[g or "model"] = zero.float().mean().item()
        all_zero = zero if all_zero is None else (all_zero & zero)
    frac = all_zero.float().mean().item()
    per = ", ".join(f"{k}: {100 * v:.1f}%" for k, v in zero_by_gradient.items() if v > 0)
    out.append(_check("non-zero input gradients", frac == 0.0,
                      f"{100 * frac:.1f}% of inputs have an all-zero input gradient under every gradient choice "
                      "(gradient masking?); try another --surrogate or the gradient-free square attack"
                      if frac > 0 else "ok" + (f" (all-zero for some inputs with single choices: {per})" if per else "")))
    return out


def tolerance(n: int, stochastic: bool) -> float:
    """The one tolerance of every accuracy comparison: exact (half a sample) for a deterministic
    model, ``2/n + 1 %`` for a randomized one (whose accuracy is itself an estimate)."""
    return (2.0 / max(n, 1) + 0.01) if stochastic else 0.5 / max(n, 1)


#: a gradient-free attack finding this much more than the gradient attacks (fraction of n) flags masking
MASKING_MARGIN = 0.02
#: rerunning the last gradient stage with twice the steps may break at most this fraction of its subset
CONVERGENCE_MARGIN = 0.01


def check_results(results: List[Dict[str, Any]], *, clean_accuracy: float, n: int, eps_zero_accuracy: Optional[float],
                  stochastic: bool) -> List[Dict[str, Any]]:
    """Checks after attacking, on the rows of :func:`~robust_snn.attacks.evaluate` (or a sweep's, converted).

    Rows need ``attack``, ``surrogate``, ``norm``, ``eps``, ``robust_accuracy``, ``iterative``,
    ``gradient_free``, ``minimum_norm``, ``within_bound``, ``in_range``; cascade stages also
    ``cascade`` and ``broken`` (samples the stage broke that every earlier stage missed).
    """
    out: List[Dict[str, Any]] = []
    slack = tolerance(n, stochastic)
    if eps_zero_accuracy is not None:
        out.append(_check("eps=0 reproduces clean accuracy", abs(eps_zero_accuracy - clean_accuracy) <= slack,
                          f"robust accuracy at eps=0 is {100 * eps_zero_accuracy:.2f}%, clean is {100 * clean_accuracy:.2f}%"))
    bad = [r for r in results if not (r["within_bound"] and r["in_range"])]
    out.append(_check("perturbations within eps and inside [0, 1]", not bad,
                      "all adversarial examples respect their budget and the image range" if not bad else
                      "violations: " + ", ".join(f"{r['attack']}@{r['eps']:g}" for r in bad)))
    # iterative >= single-step (independent attacks only: a cascade stage never sees what earlier stages broke)
    single = [r for r in results if not r["iterative"] and not r["gradient_free"] and not r.get("cascade")]
    violations = []
    for r in single:
        for s in results:
            if (s["norm"] == r["norm"] and s["iterative"] and not s["gradient_free"] and not s.get("cascade")
                    and not s["minimum_norm"] and s["eps"] == r["eps"] and s["surrogate"] == r["surrogate"]
                    and s["robust_accuracy"] > r["robust_accuracy"] + slack):
                violations.append(f"{s['attack']}@{s['eps']:g} ({100 * s['robust_accuracy']:.1f}%) > "
                                  f"{r['attack']} ({100 * r['robust_accuracy']:.1f}%)")
    if single:
        out.append(_check("iterative attacks at least as strong as single-step", not violations,
                          "ok" if not violations else "; ".join(violations) + " (too few steps or masked gradients?)"))
    # monotone in eps
    mono = []
    by_attack: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in results:
        by_attack.setdefault((r["attack"], r["surrogate"], r["norm"]), []).append(r)
    for (name, _, _), rows in by_attack.items():
        rows = sorted(rows, key=lambda r: r["eps"])
        for a, b in zip(rows, rows[1:]):
            if b["robust_accuracy"] > a["robust_accuracy"] + slack:
                mono.append(f"{name}: {100 * a['robust_accuracy']:.1f}% at eps {a['eps']:g} < {100 * b['robust_accuracy']:.1f}% at eps {b['eps']:g}")
    out.append(_check("robust accuracy non-increasing in eps", not mono, "ok" if not mono else "; ".join(mono)))
    # gradient-free vs gradient attacks
    masking = []
    margin = max(MASKING_MARGIN, slack)
    for r in results:
        if not r["gradient_free"]:
            continue
        if r.get("cascade"):  # a cascade's gradient-free stage attacks only what every gradient stage missed
            if r["broken"] / max(n, 1) > margin:
                masking.append(f"{r['attack']}@{r['eps']:g} broke {100 * r['broken'] / max(n, 1):.1f}% of the samples "
                               f"that every gradient stage missed")
            continue
        grads = [s["robust_accuracy"] for s in results if s["norm"] == r["norm"] and s["eps"] == r["eps"] and not s["gradient_free"]
                 and not s["minimum_norm"] and not s.get("cascade")]
        if grads and r["robust_accuracy"] < min(grads) - margin:
            masking.append(f"{r['attack']}@{r['eps']:g}: {100 * r['robust_accuracy']:.1f}% vs best gradient attack {100 * min(grads):.1f}%")
    if any(r["gradient_free"] for r in results):
        out.append(_check("gradient-free attack not stronger than gradient attacks", not masking,
                          "ok" if not masking else "; ".join(masking) + " (sign of gradient masking; try --surrogate ensemble)"))
    return out


def check_convergence(*, attack: str, eps: float, steps: int, n: int, survivors: int, broken: int) -> Dict[str, Any]:
    """Carlini et al.'s "more iterations do not help": ``attack`` rerun with ``steps`` (twice its own)
    on the ``survivors`` among the first ``n`` samples broke ``broken`` more."""
    return _check("more iterations do not help", broken / max(n, 1) <= CONVERGENCE_MARGIN,
                  f"{attack} with {steps} steps at eps {eps:g} broke {broken} of the {survivors} survivors among the first {n} "
                  f"samples ({100 * broken / max(n, 1):.1f}% of them; limit {100 * CONVERGENCE_MARGIN:g}%)"
                  + ("" if broken / max(n, 1) <= CONVERGENCE_MARGIN else ": the attack has not converged; use more --steps or --restarts"))
