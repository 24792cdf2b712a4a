"""The margin every attack and every judge in robust-snn uses (one definition)."""
from __future__ import annotations

import torch


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The CW margin ``logit[y] - max_{k != y} logit[k]`` per sample; negative means misclassified for sure.

    Differentiable (attacks take its gradient). Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644

    Shape: logits ``[B, K]``, labels ``[B]`` -> ``[B]``.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf"))
    return true - other.max(1).values
