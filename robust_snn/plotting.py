"""Figures for training and evaluation (matplotlib, headless backend), and the colours of event frames."""
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
    for key, label in (("val_robust_accuracy", "validation, validation suite"), ("val_pgd_accuracy", "validation, PGD-10")):
        if any(h.get(key) is not None for h in history):  # val_pgd_accuracy: logs written before the validation suite
            ax_acc.plot(epochs, [float("nan") if h.get(key) is None else 100 * h[key] for h in history], marker="o", label=label)
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


# --- event frames ------------------------------------------------------------------------------------------
# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies). Event frames are
# ``[P, H, W]`` per time bin with tonic's channel order: channel 1 holds ON events (polarity 1), channel 0 OFF.

#: colour of each kind of pixel in the event panels (RGB hex)
EVENT_COLORS: Dict[str, str] = {
    "ON": "#D55E00",          # vermillion: an ON event only
    "OFF": "#0072B2",         # blue: an OFF event only
    "ON+OFF": "#CC79A7",      # reddish purple: both polarities in the same bin
    "added": "#009E73",       # bluish green: an event the attack added (adv > clean)
    "removed": "#E69F00",     # orange: an event the attack removed (adv < clean)
    "added+removed": "#000000",  # black: one polarity added, the other removed at the same pixel
    "unchanged": "#BBBBBB",   # light grey: an event in both
}


def _rgb(name: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.asarray(to_rgb(EVENT_COLORS[name]))


def event_frame_rgb(frame: np.ndarray) -> np.ndarray:
    """One time bin ``[P, H, W]`` (event counts; > 0 is an event) -> an RGB image ``[H, W, 3]`` on white.

    Two polarities: ON (channel 1) vermillion, OFF (channel 0) blue, both purple. Any other number of
    channels: black wherever a channel has an event.
    """
    f = np.asarray(frame) > 0
    out = np.ones((*f.shape[1:], 3))
    if f.shape[0] == 2:
        off, on = f[0], f[1]
        out[on & ~off] = _rgb("ON")
        out[off & ~on] = _rgb("OFF")
        out[on & off] = _rgb("ON+OFF")
    else:
        out[f.any(0)] = 0.0
    return out


def event_change_rgb(added: np.ndarray, removed: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """The difference panel of one time bin: masks ``[P, H, W]`` -> RGB ``[H, W, 3]`` on white.

    A pixel is green where some polarity gained an event (``added``) and none lost one, orange where
    some lost one (``removed``) and none gained one, black where both happened, light grey where the
    clean frame has an event the attack left alone, white elsewhere.
    """
    a, r = np.asarray(added).any(0), np.asarray(removed).any(0)
    out = np.ones((*a.shape, 3))
    out[(np.asarray(clean) > 0).any(0)] = _rgb("unchanged")
    out[a & ~r] = _rgb("added")
    out[r & ~a] = _rgb("removed")
    out[a & r] = _rgb("added+removed")
    return out


def event_legend_handles(*, polarity: bool = True, changes: bool = True) -> list:
    """Legend patches for the colours of :func:`event_frame_rgb` and :func:`event_change_rgb`."""
    from matplotlib.patches import Patch

    labels = {"ON": "ON event", "OFF": "OFF event", "ON+OFF": "ON and OFF", "added": "added by the attack (adv > clean)",
              "removed": "removed by the attack (adv < clean)", "added+removed": "added and removed (two polarities)",
              "unchanged": "unchanged event"}
    keys = (["ON", "OFF", "ON+OFF"] if polarity else []) + (["added", "removed", "added+removed", "unchanged"] if changes else [])
    return [Patch(facecolor=EVENT_COLORS[k], edgecolor="none", label=labels[k]) for k in keys]
