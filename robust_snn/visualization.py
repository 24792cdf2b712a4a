"""What an attack does inside the network: clean vs adversarial spike trains, layer by layer.

Every function returns a matplotlib ``Figure`` (headless Agg backend); the
``robust-snn visualize`` command saves them. Recordings come from
``model(x, record=True)`` (see :class:`robust_snn.models.Recording`).

Image models (``[C, H, W]`` inputs, L∞/L2 attacks) get :func:`images_figure`; event models
(binary event frames ``[T, P, H, W]``, L0 event attacks) get :func:`events_figure` and
:func:`event_animation` instead. Every other figure takes either kind of :class:`Trace`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .plotting import EVENT_COLORS, Figure, event_change_rgb, event_frame_rgb, event_legend_handles, plt
from .models import Recording


@dataclass
class Trace:
    """One input through the network: the input (``[1, C, H, W]`` image or ``[1, T, P, H, W]`` event frames),
    logits ``[K]`` and the recording (batch of 1)."""

    x: torch.Tensor
    logits: torch.Tensor
    rec: Recording

    @property
    def prediction(self) -> int:
        return int(self.logits.argmax())

    @property
    def events(self) -> bool:
        """True for event frames ``[1, T, P, H, W]`` (an event model's input)."""
        return self.x.dim() == 5


@torch.no_grad()
def trace(model: torch.nn.Module, x: torch.Tensor, *, seed: int = 0) -> Trace:
    """Simulate one input with recording, on CPU tensors: an image ``[C, H, W]`` (or ``[1, C, H, W]``), or for
    an event model event frames ``[T, P, H, W]`` (or ``[1, T, P, H, W]``).

    Stochastic encoders are reseeded with ``seed`` so clean and adversarial traces share the same draw.
    """
    x = x.reshape(1, *x.shape[-4:] if getattr(model, "events", False) else x.shape[-3:])
    enc = getattr(model, "encoder", None)
    if enc is not None and hasattr(enc, "reseed"):
        enc.reseed(seed)
    dev = next(model.parameters()).device
    logits, rec = model(x.to(dev), record=True)
    cpu = Recording(rec.names, [s.detach().cpu() for s in rec.spikes], [m.detach().cpu() if m is not None else None for m in rec.mems],
                    rec.input_seq.detach().cpu())
    return Trace(x.cpu(), logits[0].float().cpu(), cpu)


def _conv_layers(rec: Recording) -> List[int]:
    return [i for i, s in enumerate(rec.spikes) if s.dim() == 5]


def _fc_layers(rec: Recording) -> List[int]:
    return [i for i, s in enumerate(rec.spikes) if s.dim() == 3]


def event_changes(x: torch.Tensor | np.ndarray, adv: torch.Tensor | np.ndarray) -> tuple:
    """The attack's changes to event frames, entry by entry: ``(added, removed)`` = ``(adv > x, adv < x)`` as numpy bools.

    Shape: any (e.g. ``[T, P, H, W]``), the same for both. ``added.sum() + removed.sum()`` is the L0 distance.
    """
    a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    b = adv.numpy() if isinstance(adv, torch.Tensor) else np.asarray(adv)
    if a.shape != b.shape:
        raise ValueError(f"clean and adversarial frames differ in shape: {list(a.shape)} vs {list(b.shape)}")
    return b > a, b < a


def _check_events(clean: Trace, adv: Trace) -> None:
    if not (clean.events and adv.events):
        raise ValueError("this figure shows event frames [1, T, P, H, W]; for image inputs use images_figure")


def _title(attack: Optional[str], l0: int, budget: Optional[int]) -> str:
    return f"{attack + ' on events: ' if attack else ''}L0 = {l0} flipped entries" + (f" (budget {budget})" if budget is not None else "")


# --- 1. images --------------------------------------------------------------------------------------

def images_figure(clean: Trace, adv: Trace, *, label: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> Figure:
    """Clean image, adversarial image and the perturbation (amplified, diverging colormap). 3 axes (+1 colorbar)."""
    if clean.events:
        raise ValueError("event input: draw it with events_figure (images_figure shows images [1, C, H, W])")
    name = (lambda k: str(classes[k]) if classes else str(k))
    xc, xa = clean.x[0, 0].numpy(), adv.x[0, 0].numpy()
    delta = xa - xc
    m = float(np.abs(delta).max()) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.3))
    axes[0].imshow(xc, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"clean: predicted {name(clean.prediction)}" + (f" (label {name(label)})" if label is not None else ""), fontsize=9)
    axes[1].imshow(xa, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"adversarial: predicted {name(adv.prediction)}", fontsize=9, color="red" if adv.prediction != clean.prediction else "black")
    im = axes[2].imshow(delta, cmap="RdBu_r", vmin=-m, vmax=m)
    axes[2].set_title(f"perturbation (L∞ {m:.3f}, color scale ±{m:.3f})", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    return fig


#: changed pixels in one bin up to which the difference panels also ring them (a single pixel is easy to miss)
RING_LIMIT = 20


def _ring_changes(ax: Any, added: np.ndarray, removed: np.ndarray) -> None:
    """Circle the changed pixels of one bin (masks ``[P, H, W]``) in their colours, when there are few of them."""
    a, r = added.any(0), removed.any(0)
    if 0 < int((a | r).sum()) <= RING_LIMIT:
        for mask, key in ((a & ~r, "added"), (r & ~a, "removed"), (a & r, "added+removed")):
            ys, xs = np.nonzero(mask)
            ax.scatter(xs, ys, s=70, facecolors="none", edgecolors=EVENT_COLORS[key], linewidths=1.0)


def _event_legend() -> list:
    from matplotlib.lines import Line2D

    ring = Line2D([], [], ls="none", marker="o", ms=8, mfc="none", mec="#555555", label=f"circled: changed pixels (bins with ≤ {RING_LIMIT})")
    return event_legend_handles() + [ring]


def _event_counts(frame: np.ndarray) -> str:
    """``[P, H, W]`` -> "12 ON / 9 OFF" (two polarities) or "21 events"."""
    f = frame > 0
    return f"{int(f[1].sum())} ON / {int(f[0].sum())} OFF" if f.shape[0] == 2 else f"{int(f.sum())} events"


def events_figure(clean: Trace, adv: Trace, *, attack: Optional[str] = None, budget: Optional[int] = None,
                  label: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> Figure:
    """Clean vs adversarial event frames, one column per time bin; rows clean, adversarial, difference. ``3 × T`` axes.

    Clean and adversarial rows colour the polarities (ON vermillion, OFF blue, both purple); the difference row
    shows the events the attack added (``adv > clean``, green) and removed (``adv < clean``, orange) over the clean
    events it left alone (grey). The title gives the L0 distance ``(adv != clean).sum()`` (flipped entries).
    """
    _check_events(clean, adv)
    name = (lambda k: str(classes[k]) if classes else str(k))
    xc, xa = clean.x[0].numpy(), adv.x[0].numpy()  # [T, P, H, W]
    added, removed = event_changes(xc, xa)
    l0 = int((xa != xc).sum())
    T = xc.shape[0]
    col = 1.5 if T <= 12 else 1.1
    fig, axes = plt.subplots(3, T, figsize=(max(7.0, col * T + 1.0), 3 * col + 2.2), squeeze=False)
    for t in range(T):
        panels = ((event_frame_rgb(xc[t]), _event_counts(xc[t])), (event_frame_rgb(xa[t]), _event_counts(xa[t])),
                  (event_change_rgb(added[t], removed[t], xc[t]), f"+{int(added[t].sum())} / −{int(removed[t].sum())}"))
        for r, (img, text) in enumerate(panels):
            ax = axes[r, t]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_color("#999999")
            ax.set_xlabel(text, fontsize=7, labelpad=2)
        _ring_changes(axes[2, t], added[t], removed[t])
        axes[0, t].set_title(f"bin {t}", fontsize=9)
    rows = (f"clean\n(pred {name(clean.prediction)})", f"adversarial\n(pred {name(adv.prediction)})", "difference\n(added / removed)")
    for r, text in enumerate(rows):
        axes[r, 0].set_ylabel(text, fontsize=9, color="red" if r == 1 and adv.prediction != clean.prediction else "black")
    head = _title(attack, l0, budget) + f": +{int(added.sum())} added, −{int(removed.sum())} removed"
    head += f"; predicted {name(clean.prediction)} → {name(adv.prediction)}" + (f" (label {name(label)})" if label is not None else "")
    fig.suptitle(head, fontsize=10)
    fig.legend(handles=_event_legend(), loc="lower center", ncol=4, fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    return fig


# --- 2. input spike trains ---------------------------------------------------------------------------

def input_figure(clean: Trace, adv: Trace, *, static: bool) -> Figure:
    """Input spike rasters (pixel index vs step) for rate/latency encoders; the input current for direct encoding;
    for event inputs (``static`` is then ignored) :func:`event_input_figure`. 2 axes."""
    if clean.events:
        return event_input_figure(clean, adv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, tr, title in zip(axes, (clean, adv), ("clean", "adversarial")):
        seq = tr.rec.input_seq[:, 0]  # [T, C, H, W]
        if static:
            im = ax.imshow(seq[0, 0].numpy(), cmap="viridis")
            ax.set_title(f"{title}: input current (normalized image, same at every step)", fontsize=9)
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        else:
            flat = seq.reshape(seq.shape[0], -1).numpy()  # [T, P]
            t_idx, p_idx = np.nonzero(flat)
            ax.scatter(t_idx, p_idx, s=1.5, marker="|", color="black")
            ax.set_xlim(-0.5, flat.shape[0] - 0.5)
            ax.set_ylim(0, flat.shape[1])
            ax.set_xlabel("time step")
            ax.set_ylabel("pixel index (flattened)")
            ax.set_title(f"{title}: input spikes ({int(flat.sum())} in total)", fontsize=9)
    fig.tight_layout()
    return fig


def event_input_figure(clean: Trace, adv: Trace) -> Figure:
    """Event inputs: a raster of every entry (time bin vs flattened ``(P, H, W)`` index) with the attack's added and
    removed events coloured, and the number of events per bin and polarity, clean vs adversarial. 2 axes."""
    _check_events(clean, adv)
    xc, xa = clean.x[0].numpy(), adv.x[0].numpy()  # [T, P, H, W]
    T, P = xc.shape[:2]
    added, removed = event_changes(xc, xa)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    fc, fa = xc.reshape(T, -1) > 0, xa.reshape(T, -1) > 0
    for mask, color, lab, size in ((fc & fa, EVENT_COLORS["unchanged"], "in both", 3),
                                   (added.reshape(T, -1), EVENT_COLORS["added"], f"added ({int(added.sum())})", 30),
                                   (removed.reshape(T, -1), EVENT_COLORS["removed"], f"removed ({int(removed.sum())})", 30)):
        t_idx, e_idx = np.nonzero(mask)
        axes[0].scatter(t_idx, e_idx, s=size, marker="_" if size < 10 else "|", color=color, label=lab)
    axes[0].set_xlim(-0.5, T - 0.5)
    axes[0].set_ylim(0, fc.shape[1])
    axes[0].set_xlabel("time bin")
    axes[0].set_ylabel("entry (polarity, y, x flattened)")
    if P == 2:  # channel 0 (OFF) below the line, channel 1 (ON) above
        hw = fc.shape[1] // 2
        axes[0].axhline(hw, color="#777777", ls=":", lw=0.8)
        axes[0].set_yticks([hw / 2, 1.5 * hw], ["OFF", "ON"])
    axes[0].set_title(f"input events: L0 = {int((xa != xc).sum())} flipped entries", fontsize=9)
    axes[0].legend(fontsize=8, loc="upper right")
    t = np.arange(T)
    pol = [(1, "ON"), (0, "OFF")] if P == 2 else [(None, "events")]
    for ch, lab in pol:
        color = EVENT_COLORS.get(lab, "black")
        cc = (xc > 0).sum((1, 2, 3)) if ch is None else (xc[:, ch] > 0).sum((1, 2))
        ca = (xa > 0).sum((1, 2, 3)) if ch is None else (xa[:, ch] > 0).sum((1, 2))
        axes[1].plot(t, cc, color=color, lw=3.5, alpha=0.45, marker="o", label=f"{lab}, clean")
        axes[1].plot(t, ca, color=color, ls="--", lw=1.5, marker="x", label=f"{lab}, adversarial")
    axes[1].set_xticks(t)
    axes[1].set_xlabel("time bin")
    axes[1].set_ylabel("events")
    axes[1].set_title("events per time bin", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- 3. first convolutional layer --------------------------------------------------------------------

def _mosaic(maps: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """``[C, H, W]`` -> one image with the channels on a near-square grid, separated by 1-pixel gaps."""
    c, h, w = maps.shape
    cols = int(math.ceil(math.sqrt(c)))
    rows = int(math.ceil(c / cols))
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), fill)
    for k in range(c):
        r, q = divmod(k, cols)
        out[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = maps[k]
    return out


def conv_maps_figure(clean: Trace, adv: Trace, *, timestep: int, layer: Optional[int] = None) -> Figure:
    """Spike maps of the first convolutional layer at one step, all channels on a grid: clean, adversarial, difference. 3 axes."""
    convs = _conv_layers(clean.rec)
    if not convs:
        raise ValueError("this model has no convolutional layer")
    i = convs[0] if layer is None else layer
    t = int(timestep)
    sc = clean.rec.spikes[i][t, 0].numpy()
    sa = adv.rec.spikes[i][t, 0].numpy()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    cmap = plt.get_cmap("gray_r").with_extremes(bad="#dde6f0")
    axes[0].imshow(_mosaic(sc), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"clean: {clean.rec.names[i]} spikes at t={t} ({int(sc.sum())})", fontsize=9)
    axes[1].imshow(_mosaic(sa), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"adversarial: {adv.rec.names[i]} spikes at t={t} ({int(sa.sum())})", fontsize=9)
    dmap = plt.get_cmap("RdBu_r").with_extremes(bad="#eeeeee")
    axes[2].imshow(_mosaic(sa - sc), cmap=dmap, vmin=-1, vmax=1, interpolation="nearest")
    axes[2].set_title(f"difference (red: only adversarial, blue: only clean; {int(np.abs(sa - sc).sum())} differ)", fontsize=9)
    for a in axes:
        a.axis("off")
    fig.suptitle(f"{sc.shape[0]} channels of {sc.shape[1]}×{sc.shape[2]}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


# --- 4. first fully connected layer raster -----------------------------------------------------------

def fc_raster_figure(clean: Trace, adv: Trace, *, layer: Optional[int] = None) -> Figure:
    """Raster (neuron vs step) of the first hidden fully connected layer, clean and adversarial; differing spikes highlighted. 2 axes."""
    fcs = _fc_layers(clean.rec)
    i = (fcs[0] if len(fcs) > 1 else fcs[-1]) if layer is None else layer
    sc = clean.rec.spikes[i][:, 0].numpy()  # [T, N]
    sa = adv.rec.spikes[i][:, 0].numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, s, other, title in ((axes[0], sc, sa, "clean"), (axes[1], sa, sc, "adversarial")):
        same_t, same_n = np.nonzero((s > 0) & (other > 0))
        diff_t, diff_n = np.nonzero((s > 0) & (other == 0))
        ax.scatter(same_t, same_n, s=4, marker="|", color="black", label="in both")
        ax.scatter(diff_t, diff_n, s=9, marker="|", color="red" if title == "adversarial" else "tab:blue",
                   label=f"only {title}")
        ax.set_xlim(-0.5, s.shape[0] - 0.5)
        ax.set_ylim(-1, s.shape[1])
        ax.set_xlabel("time step")
        ax.set_title(f"{title}: {clean.rec.names[i]} ({int(s.sum())} spikes, {len(diff_t)} not in the other)", fontsize=9)
        ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("neuron")
    fig.tight_layout()
    return fig


# --- 5. output vote ------------------------------------------------------------------------------------

def adversarial_leader_changes(adv: Trace) -> List[int]:
    """Time steps (0-based) at which the adversarial running vote's leading class changes (after the first output spike)."""
    ca = adv.rec.spikes[-1][:, 0].numpy().cumsum(0)
    run = ca.argmax(1)
    return [int(i) for i in range(1, len(run)) if run[i] != run[i - 1] and ca[i - 1].sum() > 0]


def plot_running_vote(ax: Any, clean: Trace, adv: Trace, *, names: Sequence[str], label: Optional[int] = None,
                      legend_fontsize: Optional[float] = None) -> None:
    """Cumulative output spikes per step (0-based) for the classes that matter, clean and adversarial, on ``ax``.

    A class keeps one colour; clean is a thick translucent solid line with dots, adversarial a thin dashed line with
    crosses drawn on top, so two lines that coincide both stay visible. Dotted black verticals mark the steps at which
    the adversarial running decision changes.
    """
    cc = clean.rec.spikes[-1][:, 0].numpy().cumsum(0)
    ca = adv.rec.spikes[-1][:, 0].numpy().cumsum(0)
    t = np.arange(cc.shape[0])
    show = [clean.prediction] + ([adv.prediction] if adv.prediction != clean.prediction else [])
    if label is not None and label not in show:
        show.append(label)
    for j, cls in enumerate(show):
        color = f"C{j}"
        ax.plot(t, cc[:, cls], color=color, ls="-", lw=4, alpha=0.45, marker="o", ms=8, label=f"class {names[cls]}, clean")
        ax.plot(t, ca[:, cls], color=color, ls="--", lw=1.8, marker="x", ms=8, mew=2, label=f"class {names[cls]}, adversarial")
    for k, f in enumerate(adversarial_leader_changes(adv)):
        ax.axvline(f, color="black", ls=":", lw=1.8, label="adversarial leader changes" if k == 0 else None)
    ax.set_xticks(t)
    ax.set_xlabel("time step")
    ax.set_ylabel("cumulative output spikes")
    ax.legend(fontsize=legend_fontsize, loc="upper left")


def output_figure(clean: Trace, adv: Trace, *, label: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> Figure:
    """Output spike counts per class (the vote), and cumulative counts over time with the decision changes marked. 2 axes."""
    sc = clean.rec.spikes[-1][:, 0].numpy()
    sa = adv.rec.spikes[-1][:, 0].numpy()
    k = sc.shape[1]
    names = [str(c) for c in (classes or range(k))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    pos = np.arange(k)
    axes[0].bar(pos - 0.2, sc.sum(0), width=0.4, label=f"clean (pred {names[clean.prediction]})")
    axes[0].bar(pos + 0.2, sa.sum(0), width=0.4, color="tab:red", hatch="//", edgecolor="white",
                label=f"adversarial (pred {names[adv.prediction]})")
    axes[0].set_xticks(pos, names)
    axes[0].set_xlabel("class")
    axes[0].set_ylabel("output spikes")
    axes[0].set_title("the vote: output spike count per class", fontsize=10)
    axes[0].legend(fontsize=8)
    plot_running_vote(axes[1], clean, adv, names=names, label=label, legend_fontsize=8)
    axes[1].set_title("running vote (dotted: the adversarial leader changes)", fontsize=10)
    fig.tight_layout()
    return fig


# --- 6. firing rates and membranes ---------------------------------------------------------------------

def layer_activity_figure(clean: Trace, adv: Trace, *, threshold: float = 1.0, classes: Optional[Sequence[str]] = None) -> Figure:
    """Firing rate per layer (clean vs adversarial) and output membrane traces with the threshold line. 2 axes."""
    names = clean.rec.names
    rc = [float(s.float().mean()) for s in clean.rec.spikes]
    ra = [float(s.float().mean()) for s in adv.rec.spikes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    pos = np.arange(len(names))
    axes[0].bar(pos - 0.2, rc, width=0.4, label="clean")
    axes[0].bar(pos + 0.2, ra, width=0.4, color="tab:red", label="adversarial")
    axes[0].set_xticks(pos, names)
    axes[0].set_ylabel("spikes / neuron / step")
    axes[0].set_title("firing rate per layer", fontsize=9)
    axes[0].legend(fontsize=8)
    mc, ma = clean.rec.mems[-1], adv.rec.mems[-1]
    if mc is not None and ma is not None:
        mc, ma = mc[:, 0].numpy(), ma[:, 0].numpy()
        t = np.arange(mc.shape[0])  # 0-based, as the rasters and the running vote
        lab = [str(c) for c in (classes or range(mc.shape[1]))]
        show = [clean.prediction] + ([adv.prediction] if adv.prediction != clean.prediction else [])
        for j, cls in enumerate(show):
            axes[1].plot(t, mc[:, cls], color=f"C{j}", marker="o", ms=3, label=f"class {lab[cls]}, clean")
            axes[1].plot(t, ma[:, cls], color=f"C{j}", ls="--", marker="x", ms=4, label=f"class {lab[cls]}, adversarial")
        axes[1].axhline(threshold, color="black", ls=":", lw=1, label="threshold")
        axes[1].set_xlabel("time step")
        axes[1].set_ylabel("membrane potential (after reset)")
        axes[1].legend(fontsize=8)
    axes[1].set_title("output neurons' membrane potential", fontsize=9)
    fig.tight_layout()
    return fig


# --- 7. animation ----------------------------------------------------------------------------------

def spike_animation(clean: Trace, adv: Trace, path: str | Path, *, fps: int = 3, classes: Optional[Sequence[str]] = None) -> int:
    """Animated GIF, one frame per step: input (spikes or current) and the running output vote, clean and adversarial side by side.

    Returns the number of frames (T). Written atomically.
    """
    T = clean.rec.spikes[-1].shape[0]
    k = clean.rec.spikes[-1].shape[-1]
    names = [str(c) for c in (classes or range(k))]
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 6))
    cum = [tr.rec.spikes[-1][:, 0].numpy().cumsum(0) for tr in (clean, adv)]
    ymax = max(float(c.max()) for c in cum) + 1

    def draw(t: int) -> None:
        for col, (tr, title) in enumerate(((clean, "clean"), (adv, "adversarial"))):
            ax_in, ax_out = axes[0, col], axes[1, col]
            ax_in.clear()
            ax_out.clear()
            if tr.events:
                ax_in.imshow(event_frame_rgb(tr.rec.input_seq[t, 0].numpy()), interpolation="nearest")
            else:
                ax_in.imshow(tr.rec.input_seq[t, 0, 0].numpy(), cmap="gray" if tr.rec.input_seq.max() <= 1 else "viridis")
            ax_in.set_title(f"{title} input, t={t + 1}/{T}", fontsize=9)
            ax_in.axis("off")
            now = tr.rec.spikes[-1][t, 0].numpy()
            ax_out.bar(np.arange(k), cum[col][t], color=["tab:red" if now[j] else "tab:gray" for j in range(k)])
            ax_out.set_ylim(0, ymax)
            ax_out.set_xticks(np.arange(k), names)
            ax_out.set_title(f"output vote (red: spiking now), leader {names[int(cum[col][t].argmax())]}", fontsize=8)
        fig.tight_layout()

    return _save_gif(fig, draw, T, path, fps=fps)


def _save_gif(fig: Figure, draw: Any, n: int, path: str | Path, *, fps: int) -> int:
    """Draw frames ``0 .. n-1`` with ``draw(i)`` on ``fig``, write them as a looping GIF atomically, close ``fig``; returns ``n``.

    The frames go straight to Pillow (as matplotlib's ``PillowWriter`` does, without its need for a ``.gif`` file name,
    so the write can be atomic). Every frame must differ (a title with the step does): Pillow merges identical ones.
    """
    from PIL import Image

    from .utils import atomic_path

    frames = []
    try:
        for i in range(n):
            draw(i)
            fig.canvas.draw()
            frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))
    finally:
        plt.close(fig)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return n


def event_animation(clean: Trace, adv: Trace, path: str | Path, *, fps: int = 2, attack: Optional[str] = None,
                    budget: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> int:
    """Animated GIF of :func:`events_figure`, one frame per time bin: clean, adversarial and difference frames of that bin,
    and the running output vote (cumulative output spikes per class) of both.

    Returns the number of frames (T, the time bins). Written atomically.
    """
    _check_events(clean, adv)
    xc, xa = clean.x[0].numpy(), adv.x[0].numpy()
    added, removed = event_changes(xc, xa)
    l0 = int((xa != xc).sum())
    T = xc.shape[0]
    k = clean.rec.spikes[-1].shape[-1]
    names = [str(c) for c in (classes or range(k))]
    cum = [tr.rec.spikes[-1][:, 0].numpy().cumsum(0) for tr in (clean, adv)]
    ymax = max(float(c.max()) for c in cum) + 1
    fig = plt.figure(figsize=(9, 6.6))
    gs = fig.add_gridspec(2, 3, height_ratios=(1.0, 0.75), left=0.06, right=0.98, top=0.86, bottom=0.17, hspace=0.45, wspace=0.12)
    ax_ev = [fig.add_subplot(gs[0, j]) for j in range(3)]
    ax_vote = fig.add_subplot(gs[1, :])
    fig.legend(handles=_event_legend(), loc="lower center", ncol=4, fontsize=7, frameon=False)
    pos = np.arange(k)

    def draw(t: int) -> None:
        for ax in (*ax_ev, ax_vote):
            ax.clear()
        panels = ((event_frame_rgb(xc[t]), f"clean: {_event_counts(xc[t])}"), (event_frame_rgb(xa[t]), f"adversarial: {_event_counts(xa[t])}"),
                  (event_change_rgb(added[t], removed[t], xc[t]), f"difference: +{int(added[t].sum())} / −{int(removed[t].sum())}"))
        for ax, (img, title) in zip(ax_ev, panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        _ring_changes(ax_ev[2], added[t], removed[t])
        ax_vote.bar(pos - 0.2, cum[0][t], width=0.4, label="clean")
        ax_vote.bar(pos + 0.2, cum[1][t], width=0.4, color="tab:red", hatch="//", edgecolor="white", label="adversarial")
        ax_vote.set_ylim(0, ymax)
        ax_vote.set_xticks(pos, names)
        ax_vote.set_ylabel("output spikes so far")
        ax_vote.set_title(f"running vote: clean leads {names[int(cum[0][t].argmax())]}, adversarial leads {names[int(cum[1][t].argmax())]}",
                          fontsize=9)
        ax_vote.legend(fontsize=8, loc="upper left")
        fig.suptitle(f"time bin {t} (of 0–{T - 1}): " + _title(attack, l0, budget) + " over all bins", fontsize=10)

    return _save_gif(fig, draw, T, path, fps=fps)


# --- quantitative companion -------------------------------------------------------------------------

def van_rossum_distance(a: torch.Tensor, b: torch.Tensor, *, tau: float = 2.0) -> float:
    """Van Rossum distance between two spike-train sets ``[T, ...]`` (exponential kernel, time constant ``tau`` steps),
    averaged over neurons: ``sqrt(sum_t (f_a - f_b)^2 / tau)`` per neuron, then the mean.

    Reference: van Rossum 2001, https://doi.org/10.1162/089976601300014321.
    """
    d = (a.float() - b.float()).reshape(a.shape[0], -1)
    decay = math.exp(-1.0 / tau)
    f = torch.zeros_like(d[0])
    total = torch.zeros_like(d[0])
    for t in range(d.shape[0]):
        f = f * decay + d[t]
        total += f * f
    return float((total / tau).sqrt().mean())


def layer_distances(clean: Trace, adv: Trace, *, tau: float = 2.0) -> List[Dict[str, Any]]:
    """Per layer: firing rate clean vs adversarial, fraction of spike slots (neuron × step) that differ, van Rossum distance."""
    out = []
    for name, sc, sa in zip(clean.rec.names, clean.rec.spikes, adv.rec.spikes):
        out.append({"layer": name, "neurons": int(sc[0, 0].numel()), "rate_clean": float(sc.float().mean()),
                    "rate_adversarial": float(sa.float().mean()), "differing_fraction": float((sc != sa).float().mean()),
                    "van_rossum": van_rossum_distance(sc[:, 0], sa[:, 0], tau=tau)})
    return out


def format_distances(rows: List[Dict[str, Any]]) -> str:
    head = f"{'layer':<10}{'neurons':>9}{'rate clean':>12}{'rate adv':>10}{'differ':>9}{'van Rossum':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:<10}{r['neurons']:>9}{r['rate_clean']:>12.4f}{r['rate_adversarial']:>10.4f}"
                     f"{100 * r['differing_fraction']:>8.2f}%{r['van_rossum']:>12.4f}")
    return "\n".join(lines)


# --- t-SNE of hidden spike counts ------------------------------------------------------------------------

def tsne(features: np.ndarray, *, perplexity: float = 30.0, iterations: int = 500, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008, https://www.jmlr.org/papers/v9/vandermaaten08a.html) to 2-D, numpy only.

    Shape: ``[N, D]`` -> ``[N, 2]``. Fine for a few hundred points.
    """
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    d2 = np.square(x[:, None, :] - x[None, :, :]).sum(-1)
    target = math.log(min(perplexity, max(2.0, (n - 1) / 3)))
    p = np.zeros((n, n))
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        di = np.delete(d2[i], i)
        for _ in range(60):
            w = np.exp(-(di - di.min()) * beta)
            s = w.sum()
            h = math.log(s) + beta * float((di - di.min()) @ w) / s
            if abs(h - target) < 1e-5:
                break
            if h > target:
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    p = (p + p.T) / (2 * n)
    p = np.maximum(p, 1e-12)
    rng = np.random.default_rng(seed)
    y = rng.normal(scale=1e-4, size=(n, 2))
    vel = np.zeros_like(y)
    gains = np.ones_like(y)
    for it in range(iterations):
        pe = p * (4.0 if it < 100 else 1.0)  # early exaggeration
        sq = np.square(y[:, None, :] - y[None, :, :]).sum(-1)
        num = 1.0 / (1.0 + sq)
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        g = 4 * (((pe - q) * num)[:, :, None] * (y[:, None, :] - y[None, :, :])).sum(1)
        mom = 0.5 if it < 250 else 0.8
        gains = np.where(np.sign(g) != np.sign(vel), gains + 0.2, gains * 0.8).clip(0.01)
        vel = mom * vel - 200.0 * gains * g
        y = y + vel
        y -= y.mean(0)
    return y


@torch.no_grad()
def hidden_counts(model: torch.nn.Module, x: torch.Tensor, *, layer: Optional[int] = None, batch_size: int = 250) -> np.ndarray:
    """Spike counts of a hidden layer (default: the first fully connected hidden layer). Shape: ``[N, ...]`` -> ``[N, neurons]``."""
    dev = next(model.parameters()).device
    feats = []
    for i in range(0, len(x), batch_size):
        _, rec = model(x[i:i + batch_size].to(dev), record=True)
        fcs = [j for j, s in enumerate(rec.spikes) if s.dim() == 3]
        j = (fcs[0] if len(fcs) > 1 else fcs[-1]) if layer is None else layer
        feats.append(rec.spikes[j].sum(0).reshape(rec.spikes[j].shape[1], -1).cpu().numpy())
    return np.concatenate(feats)


def tsne_figure(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
                classes: Optional[Sequence[str]] = None) -> Figure:
    """t-SNE of hidden-layer spike counts of clean (dots) and adversarial (crosses) inputs, colored by true class. 1 axis."""
    f = np.concatenate([hidden_counts(model, x), hidden_counts(model, x_adv)])
    emb = tsne(f, seed=seed)
    n = len(x)
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    cmap = plt.get_cmap("tab10")
    yy = y.numpy()
    ax.scatter(emb[:n, 0], emb[:n, 1], c=[cmap(int(c) % 10) for c in yy], s=12, marker="o", alpha=0.8, label="clean")
    ax.scatter(emb[n:, 0], emb[n:, 1], c=[cmap(int(c) % 10) for c in yy], s=22, marker="x", alpha=0.9, label="adversarial")
    names = [str(c) for c in (classes or range(10))]
    for c in sorted(set(yy.tolist())):
        pts = emb[:n][yy == c]
        if len(pts):
            ax.annotate(names[c], pts.mean(0), fontsize=11, weight="bold", color=cmap(c % 10))
    ax.set_title("t-SNE of hidden-layer spike counts (color: true class; x: adversarial)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: the files ``visualize --out`` may write (glob patterns); event models write ``1_events`` instead of ``1_images``
OUTPUT_PATTERNS = ("1_images.*", "1_events.*", "2_input.*", "3_conv_maps_t*.*", "4_fc_raster.*", "5_output.*", "6_activity.*",
                   "7_animation.gif", "8_tsne.*", "summary.json")

#: defaults of :func:`render_all`: attack and budget per input kind
IMAGE_DEFAULTS = {"attack": "pgd", "eps": 0.1}
EVENT_DEFAULTS = {"attack": "flip-greedy", "budget": 50}


def _attack_and_budget(model: torch.nn.Module, attack: Optional[str], eps: Optional[float], budget: Optional[int],
                       steps: Optional[int]) -> tuple:
    """The attack spec and budget for ``model``'s input kind; one clear error for an option of the other kind."""
    from .attacks.registry import event_attack_names, get_spec
    from .errors import RobustSNNError

    events = bool(getattr(model, "events", False))
    spec = get_spec(attack if attack is not None else (EVENT_DEFAULTS if events else IMAGE_DEFAULTS)["attack"])
    if events:
        if eps is not None:
            raise RobustSNNError("this model takes event tensors: its budget is a number of flipped events (--budget), not --eps")
        if spec.norm != "L0":
            raise RobustSNNError(f"{spec.name} is an image attack, but this model takes event tensors; use an event attack "
                                 f"({', '.join(event_attack_names())})")
        value = EVENT_DEFAULTS["budget"] if budget is None else budget
        if isinstance(value, bool) or not float(value).is_integer() or value < 0:
            raise RobustSNNError(f"--budget must be a whole number of flipped events >= 0, got {value}")
        value = int(value)
    else:
        if budget is not None:
            raise RobustSNNError("this model takes images: --budget sets the event budget of event models; use --eps")
        if spec.norm == "L0":
            raise RobustSNNError(f"{spec.name} is an event attack, but this model takes images; use an image attack such as pgd")
        value = float(IMAGE_DEFAULTS["eps"] if eps is None else eps)
    if steps is not None and "steps" not in spec.defaults:
        raise RobustSNNError(f"--steps is not used by {spec.name}; leave it out")
    return spec, value


def render_all(model: torch.nn.Module, *, index: Optional[int] = None, digit: Optional[int] = None, attack: Optional[str] = None,
               eps: Optional[float] = None, budget: Optional[int] = None, steps: Optional[int] = None, surrogate: Optional[str] = None,
               timestep: Optional[int] = None, out: str | Path = "figures", fmt: str = "png", tsne_samples: int = 200, seed: int = 0,
               data_dir: Optional[str] = None, progress: bool = False) -> Dict[str, Any]:
    """Attack one test input and write every figure (see ``robust-snn visualize --help``); returns a summary.

    Image models: ``attack`` (default ``pgd``) with budget ``eps`` (L∞ on the [0, 1] scale, or the L2 radius; default
    0.1); figure 1 is ``1_images``. Event models: an event attack (default ``flip-greedy``) with the L0 budget
    ``budget`` (flipped entries; default 50); figure 1 is ``1_events`` (clean / adversarial / difference per time
    bin) and the animation shows the event frames bin by bin; the conv maps default to the time bin in which the
    attack changes the first convolutional layer most (images: ``T // 2``). ``eps`` on an event model, ``budget`` on an image
    model, an attack of the other kind, or ``steps`` for an attack without steps is one :class:`RobustSNNError`.
    """
    from .attacks import evaluate
    from .data import load_split
    from .errors import RobustSNNError
    from .utils import save_figure_atomic, write_json_atomic

    if fmt not in ("png", "svg", "gif"):
        raise RobustSNNError(f"--format must be png, svg or gif, got {fmt!r}")
    if tsne_samples < 0 or tsne_samples == 1:
        raise RobustSNNError(f"--tsne-samples must be 0 or at least 2, got {tsne_samples}")
    if index is not None and digit is not None:
        raise RobustSNNError("give --index or --digit, not both")
    if index is not None and index < 0:
        raise RobustSNNError(f"--index must be >= 0, got {index}")
    spec, eps = _attack_and_budget(model, attack, eps, budget, steps)
    events = bool(getattr(model, "events", False))
    classes = model.config.get("classes")
    if events:  # event frames are read file by file (or simulated): only as many as needed
        need = max(index + 1 if index is not None else 1, 500 if digit is not None else 1, tsne_samples)
        x_all, y_all = load_split(model.config["dataset"], "test", data_dir=data_dir, num_steps=model.num_steps, limit=need)
    else:
        x_all, y_all = load_split(model.config["dataset"], "test", data_dir=data_dir)
    notes: List[str] = []
    if digit is not None:
        if not 0 <= digit < model.config["num_classes"]:
            raise RobustSNNError(f"--digit must be a class index in [0, {model.config['num_classes'] - 1}], got {digit}")
        cand = torch.nonzero(y_all == digit).squeeze(1)[:200]
        if not len(cand):
            raise RobustSNNError(f"no test sample of class {digit} among the first {len(y_all)}; give --index instead")
        with torch.no_grad():
            pred = model(x_all[cand].to(next(model.parameters()).device)).argmax(1).cpu()
        ok = cand[pred == digit]
        index = int(ok[0]) if len(ok) else int(cand[0])
    index = 0 if index is None else index
    if not 0 <= index < len(x_all):
        raise RobustSNNError(f"--index must be in [0, {len(x_all) - 1}], got {index}")
    x, y = x_all[index:index + 1], y_all[index:index + 1]
    budgets = {"eps_l0": [eps]} if events else {"eps": [eps], "eps_l2": [eps]}
    res = evaluate(model, x, y, attacks=[spec.name], **budgets, steps=steps, surrogate=surrogate, seed=seed, checks=False,
                   keep_examples=True)
    x_adv = res.example(spec.name, eps)
    clean, adv = trace(model, x[0], seed=seed), trace(model, x_adv[0], seed=seed)
    option = "--budget" if events else "--eps"
    if clean.prediction != int(y[0]):
        notes.append(f"the clean {'input' if events else 'image'} is already misclassified; the attack left it unchanged")
    elif adv.prediction == clean.prediction:
        notes.append(f"{spec.name} at {option.lstrip('-')} {eps:g} did not change the prediction; try a larger {option}")
    T = clean.rec.spikes[-1].shape[0]
    t = T // 2 if timestep is None else int(timestep)
    if timestep is None and events and _conv_layers(clean.rec):  # the bin where the attack changes the first conv layer most
        i = _conv_layers(clean.rec)[0]
        differ = (clean.rec.spikes[i] != adv.rec.spikes[i]).flatten(1).sum(1)
        t = int(differ.argmax()) if int(differ.max()) > 0 else t
    if not 0 <= t < T:
        raise RobustSNNError(f"--timestep must be in [0, {T - 1}], got {t}")
    outd = Path(out)
    outd.mkdir(parents=True, exist_ok=True)
    files: List[str] = []
    label = int(y[0])
    event_budget = int(eps) if events else None
    if fmt != "gif":
        if events:
            figs = {"1_events": events_figure(clean, adv, attack=spec.name, budget=event_budget, label=label, classes=classes)}
        else:
            figs = {"1_images": images_figure(clean, adv, label=label, classes=classes)}
        figs["2_input"] = input_figure(clean, adv, static=bool(model.encoder.static))
        if _conv_layers(clean.rec):
            figs[f"3_conv_maps_t{t}"] = conv_maps_figure(clean, adv, timestep=t)
        else:
            notes.append("no convolutional layer: figure 3 skipped")
        figs.update({"4_fc_raster": fc_raster_figure(clean, adv), "5_output": output_figure(clean, adv, label=label, classes=classes),
                     "6_activity": layer_activity_figure(clean, adv, threshold=float(model.config["threshold"]), classes=classes)})
        if tsne_samples:
            n = min(tsne_samples, len(x_all))
            r = evaluate(model, x_all[:n], y_all[:n], attacks=[spec.name], **budgets, steps=steps, surrogate=surrogate,
                         seed=seed, checks=False, keep_examples=True, progress=progress)
            figs["8_tsne"] = tsne_figure(model, x_all[:n], r.example(spec.name, eps), y_all[:n], seed=seed, classes=classes)
        for name, fig in figs.items():
            path = outd / f"{name}.{fmt}"
            save_figure_atomic(fig, path, dpi=110)
            plt.close(fig)
            files.append(str(path))
    gif = outd / "7_animation.gif"
    if events:
        frames = event_animation(clean, adv, gif, attack=spec.name, budget=event_budget, classes=classes)
    else:
        frames = spike_animation(clean, adv, gif, classes=classes)
    files.append(str(gif))
    layers = layer_distances(clean, adv)
    summary = {"checkpoint": getattr(model, "checkpoint_path", None), "index": index, "label": label, "attack": spec.name,
               "norm": spec.norm, "eps": eps, "clean_prediction": clean.prediction, "adversarial_prediction": adv.prediction,
               "num_steps": T, "timestep": t, "frames": frames, "layers": layers, "notes": notes}
    if events:
        added, removed = event_changes(clean.x, adv.x)
        summary.update({"budget": event_budget, "l0": int((adv.x != clean.x).sum()), "events_added": int(added.sum()),
                        "events_removed": int(removed.sum())})
    write_json_atomic(outd / "summary.json", summary)
    files.append(str(outd / "summary.json"))
    summary["files"] = files
    return summary
