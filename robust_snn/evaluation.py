"""Clean evaluation: accuracy, per-class accuracy, firing rates, confusion matrix."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import torch

from .errors import RobustSNNError
from .models import SpikingClassifier
from .stats import fraction
from .utils import progress_bar

#: Forward samples used to evaluate a model with a stochastic encoder.
DEFAULT_STOCHASTIC_SAMPLES = 8


def num_eval_samples(model: SpikingClassifier, samples: Optional[int] = None) -> int:
    """Forward samples to average: 1 for deterministic encoders, else ``samples`` or the default."""
    if samples is not None and samples < 1:
        raise RobustSNNError(f"--samples must be >= 1, got {samples}")
    if not model.encoder.stochastic:
        return 1
    return DEFAULT_STOCHASTIC_SAMPLES if samples is None else int(samples)


def evaluate_clean(
    model: SpikingClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 500,
    samples: Optional[int] = None,
    num_steps: Optional[int] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Clean accuracy, per-class accuracy, confusion matrix and mean firing rate per layer.

    Returns a dict with ``n``, ``accuracy``, ``per_class``, ``confusion``
    (list of lists, rows = true class), ``firing_rates`` (layer -> mean spikes
    per neuron per step), ``samples``, ``num_steps``, ``seconds``, ``img_per_s``.
    """
    if batch_size < 1:
        raise RobustSNNError(f"--batch-size must be >= 1, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    n_samples = num_eval_samples(model, samples)
    k = model.config["num_classes"]
    T = int(num_steps or model.num_steps)
    preds: List[torch.Tensor] = []
    rate_sums = torch.zeros(len(model.stage_names), dtype=torch.float64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in progress_bar(range(0, len(x), batch_size), enabled=progress, desc="eval"):
            xb = x[start: start + batch_size].to(device)
            acc = None
            for _ in range(n_samples):
                logits, rec = model(xb, num_steps=T, record=True)
                acc = logits.float() if acc is None else acc + logits.float()
                for i, spk in enumerate(rec.spikes):
                    rate_sums[i] += spk.float().mean(dim=tuple(d for d in range(spk.dim()) if d != 1)).sum().item()
            preds.append(acc.argmax(1).cpu())
    seconds = time.perf_counter() - t0
    pred = torch.cat(preds)
    conf = torch.zeros(k, k, dtype=torch.int64)
    conf.index_put_((y.cpu(), pred), torch.ones_like(pred), accumulate=True)
    support = conf.sum(1)
    per_class = {
        model.config["classes"][i]: (conf[i, i].item() / support[i].item()) if support[i] > 0 else None for i in range(k)
    }
    n = len(y)
    return {
        "n": n,
        "accuracy": fraction(pred == y.cpu()),
        "per_class": per_class,
        "confusion": conf.tolist(),
        "firing_rates": {name: rate_sums[i].item() / (n * n_samples) for i, name in enumerate(model.stage_names)},
        "samples": n_samples,
        "num_steps": T,
        "seconds": seconds,
        "img_per_s": n * n_samples / seconds if seconds > 0 else float("nan"),
    }
