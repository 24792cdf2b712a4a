"""The one result type of an evaluation: :class:`EvaluationResult`.

``evaluate`` returns it; the CLI, sweeps, the app and the visualizations read it through
its accessors, so no caller rebuilds keys such as ``"pgd@0.1"`` itself. It is a ``dict``
as well (the JSON that ``attack --json`` prints and older callers index), with these keys:

* ``n``, ``clean_accuracy``, ``clean_interval``, ``stochastic``, ``eot_samples``, ``surrogate``,
  ``suite``, ``robustness_claim``, ``stages``, ``adaptive``;
* ``results``: one row per (attack or suite stage, budget): ``attack``, ``norm``, ``eps``,
  ``robust_accuracy`` with ``n``/``k``/``ci_low``/``ci_high``, perturbation statistics, ...;
* ``worst_case``: per (norm, budget), the per-sample worst case over every row;
* ``checks``: the sanity checks; ``worst_case_masks`` (and ``_defended_``): per-sample booleans;
* with ``keep_examples``: ``examples`` and ``example_predictions`` per row.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..errors import RobustSNNError


def result_key(name: str, eps: float) -> str:
    """The key of a row's examples and masks: ``"pgd@0.1"``, ``"Linf@0.3"``."""
    return f"{name}@{float(eps):g}"


class EvaluationResult(dict):
    """What :func:`robust_snn.attacks.evaluate` found (a ``dict`` with typed accessors)."""

    # -- fields ------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self["n"])

    @property
    def clean_accuracy(self) -> float:
        return float(self["clean_accuracy"])

    @property
    def rows(self) -> List[Dict[str, Any]]:
        """One row per (attack or stage, budget), in run order."""
        return self["results"]

    @property
    def checks(self) -> List[Dict[str, Any]]:
        return self["checks"]

    @property
    def passed(self) -> bool:
        """Every sanity check passed."""
        return all(c["passed"] for c in self["checks"])

    # -- lookups -----------------------------------------------------------------------------------
    def row(self, attack: str, eps: float) -> Dict[str, Any]:
        """The row of ``attack`` (its label, e.g. ``apgd[fast_sigmoid:slope=5]``, or its kind) at ``eps``."""
        at = [r for r in self["results"] if r["eps"] == float(eps)]
        for r in [r for r in at if r["attack"] == attack] + [r for r in at if r.get("attack_kind") == attack]:
            return r
        raise RobustSNNError(f"no result for {result_key(attack, eps)}; have: "
                             f"{', '.join(result_key(r['attack'], r['eps']) for r in self['results'])}")

    def worst(self, eps: float, norm: str = "Linf") -> Dict[str, Any]:
        """The per-sample worst case over every attack at one budget."""
        for w in self["worst_case"]:
            if w["norm"] == norm and w["eps"] == float(eps):
                return w
        raise RobustSNNError(f"no worst case for {result_key(norm, eps)}")

    def worst_mask(self, eps: float, norm: str = "Linf", *, defended: bool = False) -> torch.Tensor:
        """Per sample: still correct after every attack at this budget (``defended``: or rejected by the detector)."""
        masks = self["worst_case_defended_masks" if defended else "worst_case_masks"]
        return masks[result_key(norm, eps)]

    def example(self, attack: str, eps: float) -> torch.Tensor:
        """The adversarial inputs of ``attack`` at ``eps`` (needs ``keep_examples=True``)."""
        if "examples" not in self:
            raise RobustSNNError("no adversarial examples kept: evaluate(..., keep_examples=True)")
        key = result_key(self.row(attack, eps)["attack"], eps)
        return self["examples"][key]

    def example_predictions(self, attack: str, eps: float) -> torch.Tensor:
        """The predictions the examples of ``attack`` at ``eps`` were judged by."""
        if "example_predictions" not in self:
            raise RobustSNNError("no adversarial examples kept: evaluate(..., keep_examples=True)")
        return self["example_predictions"][result_key(self.row(attack, eps)["attack"], eps)]
