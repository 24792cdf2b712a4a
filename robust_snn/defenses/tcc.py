"""Temporal-consistency detector (``tcc``): flags inputs whose spiking decision is late or unstable.

An SNN decides over time. On clean inputs the running vote (cumulative output
spike counts) settles early on one class and every time window agrees with it;
adversarial inputs pushed just across a decision boundary tend to decide late,
flip back and forth, disagree across windows and win by a small spike margin.
The detector measures these from the output spike trains ``[T, B, K]``:

* ``flips``: how often the running argmax changes (after the first output spike), / (T - 1);
* ``latency``: the first step from which the running argmax equals the final decision, / T;
* ``window``: fraction of ``windows`` equal time windows whose own vote disagrees with the final one;
* ``margin``: minus the final spike-count margin (top-1 minus top-2), / T;
* ``resample`` (stochastic encoders only): fraction of ``draws`` re-encodings whose
  decision differs from the majority.

Each feature is standardized with mean and standard deviation from clean
calibration data; the score is their mean. :meth:`soft_score` is a differentiable
surrogate of the same quantities for adaptive attacks.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RobustSNNError
from ..encoders import is_stochastic
from .base import Detector

FEATURES = ("flips", "latency", "window", "margin", "resample")


def _running_argmax(counts: torch.Tensor) -> torch.Tensor:
    """Argmax of cumulative counts ``[T, B, K]`` -> ``[T, B]``; -1 while no output spike has happened."""
    arg = counts.argmax(-1)
    return torch.where(counts.sum(-1) > 0, arg, torch.full_like(arg, -1))


def consistency_features(spk: torch.Tensor, *, windows: int = 4) -> torch.Tensor:
    """Hard temporal-consistency features of output spike trains.

    Shape: ``spk`` ``[T, B, K]`` -> ``[B, 4]`` (flips, latency, window, margin).
    """
    t_steps = spk.shape[0]
    counts = spk.cumsum(0)
    run = _running_argmax(counts)  # [T, B]
    final = counts[-1].argmax(-1)  # [B]
    started = run[:-1] >= 0
    flips = ((run[1:] != run[:-1]) & started).float().sum(0) / max(1, t_steps - 1)
    agree = run == final[None]  # [T, B]
    # latency: first t such that agree[s] for all s >= t
    suffix_ok = torch.flip(torch.cumprod(torch.flip(agree, [0]).int(), 0), [0]).bool()  # [T, B]
    latency = (t_steps - suffix_ok.float().sum(0)) / t_steps
    w = max(1, min(windows, t_steps))
    bounds = torch.linspace(0, t_steps, w + 1).round().long().tolist()
    dis = torch.zeros_like(latency)
    for a, b in zip(bounds[:-1], bounds[1:]):
        wc = spk[a:b].sum(0)  # [B, K]
        wpred = torch.where(wc.sum(-1) > 0, wc.argmax(-1), torch.full_like(final, -1))
        dis += (wpred != final).float()
    window = dis / w
    top2 = counts[-1].topk(2, dim=-1).values
    margin = -(top2[:, 0] - top2[:, 1]) / t_steps
    return torch.stack([flips, latency, window, margin], 1)


def soft_consistency_features(spk: torch.Tensor, *, windows: int = 4, temperature: float = 1.0) -> torch.Tensor:
    """Differentiable counterpart of :func:`consistency_features` (gradients through the spikes' surrogate).

    Running votes become softmax distributions ``q_t``; disagreement is ``1 - <q_a, q_b>``.

    Shape: ``[T, B, K]`` -> ``[B, 4]``.
    """
    t_steps = spk.shape[0]
    counts = spk.cumsum(0)
    q = F.softmax(counts / temperature, dim=-1)
    q_final = q[-1]
    flips = (1 - (q[1:] * q[:-1]).sum(-1)).mean(0) if t_steps > 1 else torch.zeros_like(q_final[:, 0])
    latency = (1 - (q * q_final[None]).sum(-1)).mean(0)
    w = max(1, min(windows, t_steps))
    bounds = torch.linspace(0, t_steps, w + 1).round().long().tolist()
    window = sum(1 - (F.softmax(spk[a:b].sum(0) / temperature, -1) * q_final).sum(-1) for a, b in zip(bounds[:-1], bounds[1:])) / w
    top2 = counts[-1].topk(2, dim=-1).values
    margin = -(top2[:, 0] - top2[:, 1]) / t_steps
    return torch.stack([flips, latency, window, margin], 1)


class TemporalConsistencyDetector(Detector):
    """Detector on the temporal consistency of the output spike trains (see module docstring).

    Args:
        model: a :class:`~robust_snn.models.SpikingClassifier` (anything with ``output_spikes``).
        fpr: target false-positive rate on clean data.
        windows: number of equal time windows compared with the final vote.
        draws: re-encodings per input for stochastic encoders (adds the ``resample`` feature).

    Shape: ``score``: ``[B, C, H, W]`` -> ``[B]``.
    """

    name = "tcc"

    def __init__(self, model: nn.Module, *, fpr: float = 0.05, windows: int = 4, draws: int = 4) -> None:
        super().__init__(fpr=fpr)
        if windows < 1:
            raise RobustSNNError(f"tcc windows must be >= 1, got {windows}")
        if draws < 1:
            raise RobustSNNError(f"tcc draws must be >= 1, got {draws}")
        object.__setattr__(self, "_model", model)  # not a submodule: the model is owned elsewhere
        self.windows = int(windows)
        self.stochastic = is_stochastic(model)
        self.draws = int(draws) if self.stochastic else 1
        nf = 5 if self.stochastic else 4
        dev = next(model.parameters()).device
        self.register_buffer("mean", torch.zeros(nf, device=dev))
        self.register_buffer("std", torch.ones(nf, device=dev))
        self.threshold = self.threshold.to(dev)

    @property
    def model(self) -> nn.Module:
        return self._model

    def params(self) -> Dict[str, Any]:
        return {"fpr": self.fpr, "windows": self.windows, "draws": self.draws}

    def spec(self) -> str:
        return f"tcc:fpr={self.fpr:g},windows={self.windows}" + (f",draws={self.draws}" if self.stochastic else "")

    def _spikes(self, x: torch.Tensor) -> torch.Tensor:
        """Output spikes ``[R, T, B, K]`` (R = draws)."""
        if self.draws == 1:
            return self.model.output_spikes(x)[None]
        b = x.shape[0]
        spk = self.model.output_spikes(x.repeat(self.draws, *([1] * (x.dim() - 1))))  # [T, R*B, K]
        return spk.view(spk.shape[0], self.draws, b, -1).transpose(0, 1)

    def features(self, x: torch.Tensor, *, soft: bool = False) -> torch.Tensor:
        """Raw (unstandardized) features ``[B, F]``."""
        return self.features_from_spikes(self._spikes(x), soft=soft)

    def features_from_spikes(self, spk: torch.Tensor, *, soft: bool = False) -> torch.Tensor:
        """Features of output spikes ``[R, T, B, K]`` -> ``[B, F]``."""
        fn = soft_consistency_features if soft else consistency_features
        per_draw = torch.stack([fn(s, windows=self.windows) for s in spk])  # [R, B, 4]
        feats = per_draw.mean(0)
        if self.stochastic:
            preds = spk.sum(1).argmax(-1)  # [R, B]
            if soft:
                probs = F.softmax(spk.sum(1), -1)  # [R, B, K]
                resample = 1 - (probs * probs.mean(0, keepdim=True)).sum(-1).mean(0)
            else:
                majority = preds.mode(0).values
                resample = (preds != majority[None]).float().mean(0)
            feats = torch.cat([feats, resample[:, None]], 1)
        return feats

    def _combine(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats - self.mean) / self.std).mean(1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._combine(self.features(x))

    def soft_score(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable score for adaptive attacks (same standardization)."""
        return self._combine(self.features(x, soft=True))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, *, batch_size: int = 500) -> None:
        dev = self.mean.device
        f = torch.cat([self.features(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])
        self.mean.copy_(f.mean(0))
        self.std.copy_(f.std(0).clamp_min(1e-3))


def feature_table(det: TemporalConsistencyDetector, x: torch.Tensor, *, batch_size: int = 500) -> Dict[str, float]:
    """Mean of each raw feature over ``x`` (for reports)."""
    names = FEATURES[:5 if det.stochastic else 4]
    with torch.no_grad():
        f = torch.cat([det.features(x[i:i + batch_size].to(det.mean.device)).cpu() for i in range(0, len(x), batch_size)])
    return {n: float(v) for n, v in zip(names, f.mean(0))}
