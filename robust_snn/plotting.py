"""Figures for training and evaluation (matplotlib, headless backend)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Sequence

if TYPE_CHECKING:  # annotations only: plotting does not need torch at import
    import torch

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], *, title: str = "Confusion matrix") -> Figure:
    """Confusion matrix heat map (rows: true class, columns: predicted)."""
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6, 5.2))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if cm[i, j] > thresh else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def training_curves_figure(history: List[Dict[str, float]]) -> Figure:
    """Loss and accuracy per epoch (train, and validation when present)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    if any(h.get("val_loss") is not None for h in history):
        ax_loss.plot(epochs, [h.get("val_loss") for h in history], marker="o", label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], marker="o", label="train")
    if any(h.get("val_accuracy") is not None for h in history):
        ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], marker="o", label="validation")
    if any(h.get("val_pgd_accuracy") is not None for h in history):
        ax_acc.plot(epochs, [100 * h["val_pgd_accuracy"] for h in history], marker="o", label="validation, PGD-10")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def roc_curve(neg: "torch.Tensor", pos: "torch.Tensor") -> tuple:
    """False- and true-positive rates over all thresholds (scores: higher = positive)."""
    import torch

    scores = torch.cat([neg, pos]).double()
    labels = torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))]).double()
    order = torch.argsort(scores, descending=True)
    tp = torch.cumsum(labels[order], 0)
    fp = torch.cumsum(1 - labels[order], 0)
    fpr = torch.cat([torch.zeros(1), fp / max(1, len(neg))])
    tpr = torch.cat([torch.zeros(1), tp / max(1, len(pos))])
    return fpr.numpy(), tpr.numpy()


def roc_figure(scores: Dict[str, tuple], *, title: str = "detector") -> Figure:
    """ROC curves of a detector, clean (negatives) vs successful adversarial examples (positives), one per attack/eps."""
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for key, (neg, pos) in scores.items():
        if len(neg) == 0 or len(pos) == 0:
            continue
        fpr, tpr = roc_curve(neg, pos)
        ax.plot(fpr, tpr, label=key)
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
    ax.set_xlabel("false-positive rate (clean rejected)")
    ax.set_ylabel("true-positive rate (adversarial detected)")
    ax.set_title(f"ROC: {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
