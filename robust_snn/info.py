"""What this installation offers (``robust-snn info``)."""
from __future__ import annotations

from typing import Any, Dict

from .data import DATASETS
from .encoders import ENCODERS
from .errors import RobustSNNError
from .models import ARCHITECTURES
from .neurons import NEURON_DESCRIPTIONS
from .surrogates import SPECIAL_GRADIENTS, SURROGATES, canonical
from .threat import THREAT_MODELS


def gather_info() -> Dict[str, Any]:
    """Models, encoders, datasets, surrogates, attacks and the default checkpoint."""
    from .checkpoint import default_checkpoint, read_checkpoint

    data: Dict[str, Any] = {
        "models": list(ARCHITECTURES),
        "neurons": dict(NEURON_DESCRIPTIONS),
        "threat_models": {k: t.describe() for k, t in THREAT_MODELS.items()},
        "encoders": {k: {"stochastic": v.stochastic} for k, v in ENCODERS.items()},
        "datasets": list(DATASETS),
        "surrogates": [canonical(k) for k in SURROGATES],
        "attack_gradients": list(SPECIAL_GRADIENTS) + ["ensemble"],
    }
    try:
        from .attacks.registry import ATTACKS

        from .attacks.evaluate import EVENT_THREATS

        data["attacks"] = {
            name: {"norm": spec.norm, "description": spec.description, "defaults": dict(spec.defaults),
                   # event attacks run under either event threat model (attack --threat)
                   "threat_models": list(EVENT_THREATS) if spec.norm == "L0" else [spec.norm]}
            for name, spec in ATTACKS.items()
        }
    except ImportError:  # pragma: no cover - attacks subpackage always ships
        data["attacks"] = {}
    from .attacks.registry import ATTACKS
    from .attacks.suite import DEFAULT_SUITE, EVENTS_SUITE, SUITES

    data["suites"] = {
        name: {"default": name == DEFAULT_SUITE, "default_for_event_models": name == EVENTS_SUITE, "cascade": s.cascade,
               "robustness_claim": s.claim, "description": s.description,
               "stages": [{"attack": st.attack, "gradient": None if ATTACKS[st.attack].gradient_free else st.gradient or "model",
                           **{k: v for k, v in (("steps", st.steps), ("queries", st.queries), ("targets", st.targets)) if v is not None}}
                          for st in s.stages]}
        for name, s in SUITES.items()
    }
    try:
        path = default_checkpoint()
        payload = read_checkpoint(path)
        cfg, metrics = payload["config"], payload.get("metrics", {})
        data["default_checkpoint"] = {
            "path": str(path), "arch": cfg.get("arch"), "num_steps": cfg.get("num_steps"),
            "encoding": cfg.get("encoding"), "test_accuracy": metrics.get("test_accuracy"), "test_n": metrics.get("test_n"),
        }
    except RobustSNNError as e:
        data["default_checkpoint"] = {"path": None, "error": str(e)}
    return data
