"""Randomized smoothing: certified L2 robustness (Cohen, Rosenfeld & Kolter 2019, https://arxiv.org/abs/1902.02918).

The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` is
certifiably robust within L2 radius ``sigma * Phi^-1(p_A)`` where ``p_A`` is a
lower confidence bound (one-sided Clopper-Pearson) on the top class's probability.
The base classifier ``f`` sees the noisy image unclipped, as in the paper; train
it with ``--noise-sigma`` so it is accurate under noise.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm

from ..errors import RobustSNNError
from ..models import unchecked_inputs
from ..utils import progress_bar

ABSTAIN = -1
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if k <= 0:
        return 0.0
    return float(beta_dist.ppf(alpha, k, n - k + 1))


class Smooth:
    """Monte-Carlo smoothed classifier around a base model.

    Args:
        model: base classifier on images (logits ``[B, K]``).
        num_classes: K.
        sigma: noise standard deviation on the [0, 1] pixel scale.
        batch_size: noisy copies per forward pass.
    """

    def __init__(self, model: torch.nn.Module, *, num_classes: int, sigma: float, batch_size: int = 500) -> None:
        if not 0 < sigma < float("inf"):
            raise RobustSNNError(f"--sigma must be a positive finite number, got {sigma}")
        if batch_size < 1:
            raise RobustSNNError(f"--batch-size must be >= 1, got {batch_size}")
        self.model = model
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def sample_counts(self, x: torch.Tensor, num: int, *, generator: torch.Generator) -> torch.Tensor:
        """Class counts of the base classifier over ``num`` noisy copies of one image ``[C, H, W]``."""
        device = next(self.model.parameters()).device
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        left = num
        while left > 0:
            b = min(self.batch_size, left)
            noise = torch.randn((b, *x.shape), generator=generator) * self.sigma
            with unchecked_inputs(self.model):  # Cohen et al. classify unclipped noisy images
                pred = self.model((x[None] + noise).to(device)).argmax(1).cpu()
            counts += torch.bincount(pred, minlength=self.num_classes)
            left -= b
        return counts

    def certify(self, x: torch.Tensor, *, n0: int, n: int, alpha: float, generator: torch.Generator) -> tuple[int, float]:
        """CERTIFY: ``(class, radius)`` or ``(ABSTAIN, 0.0)``."""
        c_a = int(self.sample_counts(x, n0, generator=generator).argmax())
        counts = self.sample_counts(x, n, generator=generator)
        p_a = lower_confidence_bound(int(counts[c_a]), n, alpha)
        if p_a < 0.5:
            return ABSTAIN, 0.0
        return c_a, self.sigma * float(norm.ppf(p_a))

    def predict(self, x: torch.Tensor, *, n: int, alpha: float, generator: torch.Generator) -> int:
        """PREDICT: the top class if it beats the runner-up at level ``alpha`` (two-sided binomial test), else ABSTAIN."""
        counts = self.sample_counts(x, n, generator=generator)
        top2 = counts.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])


def certify_dataset(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    batch_size: int = 500,
    seed: int = 0,
    radii: Sequence[float] = DEFAULT_RADII,
    indices: Optional[Sequence[int]] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Certify every image of ``(x, y)``: per-sample prediction and radius, certified accuracy per radius.

    Noise for image ``i`` comes from a generator seeded with ``seed`` and the
    image's dataset index, so results do not depend on batching or sharding.

    Shape: ``x`` ``[N, C, H, W]``, ``y`` ``[N]``.
    """
    if n0 < 1 or n < 1:
        raise RobustSNNError(f"--n0 and --n must be >= 1, got {n0} and {n}")
    if not 0 < alpha < 1:
        raise RobustSNNError(f"--alpha must be in (0, 1), got {alpha}")
    if len(x) == 0 or len(x) != len(y):
        raise RobustSNNError("need a non-empty set of images and as many labels")
    model.eval()
    smooth = Smooth(model, num_classes=int(model.config["num_classes"]), sigma=sigma, batch_size=batch_size)
    idx = list(range(len(x))) if indices is None else [int(i) for i in indices]
    rows: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    for j in progress_bar(range(len(x)), enabled=progress, desc=f"certify sigma={sigma:g}"):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + idx[j])
        t1 = time.perf_counter()
        pred, radius = smooth.certify(x[j], n0=n0, n=n, alpha=alpha, generator=gen)
        rows.append({"index": idx[j], "label": int(y[j]), "prediction": pred, "radius": radius,
                     "correct": pred == int(y[j]), "abstain": pred == ABSTAIN, "seconds": time.perf_counter() - t1})
    total = len(rows)
    table = [{"radius": float(r), "certified_accuracy": sum(1 for row in rows if row["correct"] and row["radius"] >= r) / total}
             for r in radii]
    return {
        "sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "seed": seed, "count": total,
        "accuracy": sum(row["correct"] for row in rows) / total,
        "abstain_rate": sum(row["abstain"] for row in rows) / total,
        "mean_certified_radius": sum(row["radius"] for row in rows if row["correct"]) / total,
        "table": table, "rows": rows, "seconds": time.perf_counter() - t0,
    }


def certified_accuracy_figure(results: Sequence[Dict[str, Any]]):
    """Certified accuracy vs L2 radius, one line per sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for res in results:
        radii = sorted({0.0} | {row["radius"] for row in res["rows"] if row["correct"]})
        grid = [i * 0.01 for i in range(int(math.ceil(max(radii + [2.0]) / 0.01)) + 1)]
        acc = [sum(1 for row in res["rows"] if row["correct"] and row["radius"] >= r) / res["count"] for r in grid]
        ax.plot(grid, [100 * a for a in acc], label=f"sigma = {res['sigma']:g}")
    ax.set_xlabel("L2 radius")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
