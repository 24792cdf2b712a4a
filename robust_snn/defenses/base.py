"""Defense contracts: :class:`Preprocessor`, :class:`Detector` and the :class:`Defended` model.

A preprocessor maps images to images (same shape, [0, 1]) and sits in front of the
model, so a white-box attack on ``Defended`` goes through it (adaptive evaluation,
Tramèr et al. 2020, https://arxiv.org/abs/2002.08347). Non-differentiable
preprocessors give a straight-through (BPDA) backward (Athalye et al. 2018,
https://arxiv.org/abs/1802.00420). A detector scores inputs (higher = more
suspicious) and rejects those above a threshold calibrated on clean data.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..errors import RobustSNNError
from ..specs import parse_value, split_spec


class Preprocessor(nn.Module):
    """Image-to-image input transformation applied before the model.

    Shape: ``[B, C, H, W]`` -> ``[B, C, H, W]``, values in [0, 1].

    Attributes:
        name: registry name (``blur``, ``quantize``, ``denoise``).
        differentiable: ``False`` when the backward is a BPDA approximation.
        events: transforms event tensors ``[B, T, P, H, W]`` (models with ``input = "events"``)
            instead of images.
    """

    name = "preprocessor"
    differentiable = True
    events = False

    def params(self) -> Dict[str, Any]:
        """Hyperparameters, for reports."""
        return {}

    def spec(self) -> str:
        """``name:k=v,...`` as accepted by ``--defense``."""
        p = self.params()
        return self.name + (":" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()) if p else "")

    def extra_repr(self) -> str:
        return self.spec()  # repr(model) names the settings (the attack journal's fingerprint relies on it)


class Detector(nn.Module):
    """Adversarial-input detector: ``score(x) -> [B]`` (higher = more suspicious) and a threshold.

    ``calibrate`` sets the threshold so that a fraction ``fpr`` of clean
    calibration inputs score above it; ``detect(x)`` is ``score(x) > threshold``.
    """

    name = "detector"

    def __init__(self, *, fpr: float = 0.05) -> None:
        super().__init__()
        if not 0 < fpr < 1:
            raise RobustSNNError(f"detector fpr must be in (0, 1), got {fpr}")
        self.fpr = float(fpr)
        self.register_buffer("threshold", torch.tensor(float("nan")))

    @property
    def calibrated(self) -> bool:
        return not math.isnan(float(self.threshold))

    def score(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def fit(self, x: torch.Tensor, *, batch_size: int = 500) -> None:
        """Fit any score statistics on clean data (before the threshold is set). Default: nothing."""

    @torch.no_grad()
    def scores(self, x: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
        """Scores of a whole set (batched), on CPU. Shape: ``[N, ...]`` -> ``[N]``."""
        dev = self.device
        return torch.cat([self.score(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)])

    @property
    def device(self) -> torch.device:
        return self.threshold.device

    def calibrate(self, x_clean: torch.Tensor, *, fpr: Optional[float] = None, batch_size: int = 500) -> float:
        """Fit on clean held-out images and set the threshold at the ``1 - fpr`` quantile of their scores.

        Returns the threshold. The empirical false-positive rate on ``x_clean`` is at most ``fpr``.
        """
        if fpr is not None:
            if not 0 < fpr < 1:
                raise RobustSNNError(f"detector fpr must be in (0, 1), got {fpr}")
            self.fpr = float(fpr)
        if len(x_clean) < 20:
            raise RobustSNNError(f"need at least 20 clean images to calibrate a detector, got {len(x_clean)}")
        self.fit(x_clean, batch_size=batch_size)
        s = self.scores(x_clean, batch_size=batch_size).double()
        # the smallest threshold t with mean(s > t) <= fpr
        k = int(math.floor(self.fpr * len(s)))
        srt = torch.sort(s, descending=True).values
        t = float(srt[k]) if k < len(s) else float(srt[-1])
        self.threshold.fill_(t)
        return t

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B]``: True where the input is flagged as adversarial."""
        if not self.calibrated:
            raise RobustSNNError("the detector has no threshold; call calibrate() on clean held-out data first")
        return self.score(x) > self.threshold

    def spec(self) -> str:
        return f"{self.name}:fpr={self.fpr:g}"

    def extra_repr(self) -> str:
        return self.spec()


class Defended(nn.Module):
    """A model behind input preprocessors, with an optional detector.

    ``forward(x)`` is ``model(p_k(...p_1(x)))``: attacks on it are adaptive to
    the preprocessors. The detector sees the preprocessed input.

    Shape: ``[B, C, H, W]`` in [0, 1] -> logits ``[B, K]``.
    """

    def __init__(self, model: nn.Module, *, preprocessors: Sequence[Preprocessor] = (), detector: Optional[Detector] = None) -> None:
        super().__init__()
        events = bool(getattr(model, "events", False))
        for p in preprocessors:
            p_events = bool(getattr(p, "events", False))
            if p_events != events:
                raise RobustSNNError(f"defense {p.name!r} filters {'event tensors' if p_events else 'images'}, but this model takes "
                                     f"{'event tensors (use denoise)' if events else 'images (use blur or quantize)'}")
        self.model = model
        self.preprocessors = nn.ModuleList(list(preprocessors))
        self.detector = detector
        self.train(model.training)

    # the SpikingClassifier attributes tools look for
    @property
    def config(self) -> Dict[str, Any]:
        return getattr(self.model, "config", {})

    @property
    def events(self) -> bool:
        """The model takes event tensors ``[B, T, P, H, W]``."""
        return bool(getattr(self.model, "events", False))

    @property
    def encoder(self) -> Any:
        return getattr(self.model, "encoder", None)

    @property
    def num_steps(self) -> int:
        return getattr(self.model, "num_steps")

    @property
    def checkpoint_path(self) -> Optional[str]:
        return getattr(self.model, "checkpoint_path", None)

    def preprocess_input(self, x: torch.Tensor) -> torch.Tensor:
        for p in self.preprocessors:
            x = p(x)
        return x

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        return self.model(self.preprocess_input(x), **kwargs)

    def output_spikes(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.output_spikes(self.preprocess_input(x))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        if self.detector is None:
            raise RobustSNNError("this model has no detector")
        return self.detector.score(self.preprocess_input(x))

    def detect(self, x: torch.Tensor) -> torch.Tensor:
        if self.detector is None:
            raise RobustSNNError("this model has no detector")
        return self.detector.detect(self.preprocess_input(x))

    def describe(self) -> str:
        parts = [p.spec() for p in self.preprocessors]
        if self.detector is not None:
            parts.append(self.detector.spec())
        return " + ".join(parts) if parts else "none"


def parse_defense_spec(text: str) -> tuple[str, Dict[str, Any]]:
    """``"blur:sigma=1.0,kernel=5"`` -> ``("blur", {"sigma": 1.0, "kernel": 5})`` (numbers parsed and finite)."""
    name, raw = split_spec(text, what="defense")
    return name, {k: parse_value(v, key=k, spec=text, what="defense") for k, v in raw.items()}
