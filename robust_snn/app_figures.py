"""Figures of the web app, sized for a 1280-pixel window, and the HTML that shows them.

Every builder returns an :class:`AppFigure`: a matplotlib figure whose panels are
titled ``(a)``, ``(b)``, ... and one caption line per panel saying what it shows.
:meth:`AppFigure.html` renders it at 100 dpi as an ``<img>`` (its alt text is the
panel titles, so the page states in text what the figure states in pixels) with the
captions underneath. Fonts are at least :data:`MIN_FONT_PT` points, that is at least
11 CSS pixels when the image is shown at its natural size; the page never scales
an image up, and at 1280 pixels no figure is wider than its column.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text

from .visualization import Trace, _conv_layers, _fc_layers, _mosaic, layer_distances, plot_running_vote

#: dots per inch of the PNGs sent to the page (1 point = 100/72 CSS pixels at natural size)
DPI = 100
#: the smallest font in any app figure, in points (8.5 pt = 11.8 px at natural size)
MIN_FONT_PT = 8.5
#: full-width figures (the attack panel), inches: 1,180 px, inside the 1,216-pixel column of a 1280-pixel window
WIDE_IN = 11.8
_RC = {"font.size": 11, "axes.titlesize": 11.5, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
       "legend.fontsize": 10, "figure.dpi": DPI}
_CLEAN, _ADV = "tab:blue", "tab:red"


@dataclass
class AppFigure:
    """A figure and one caption line per panel (in panel order)."""

    figure: Figure
    captions: List[str]

    @property
    def titles(self) -> List[str]:
        """The panels' titles, in order (colorbars and untitled axes left out)."""
        return [a.get_title() for a in self.figure.axes if a.get_title()]

    def min_font_pt(self) -> float:
        """The smallest font size (points) of any visible text once drawn (tick labels included)."""
        self.figure.canvas.draw()
        sizes = [t.get_fontsize() for t in self.figure.findobj(Text) if t.get_visible() and t.get_text().strip()]
        return float(min(sizes)) if sizes else float("inf")

    def html(self, *, elem_class: str = "rsnn-figure") -> str:
        """The figure as a data-URL PNG in a ``<figure>`` with alt text (the titles) and the captions."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=DPI)
        w, h = (int(round(v * DPI)) for v in self.figure.get_size_inches())
        min_px = self.min_font_pt() * DPI / 72
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        alt = html.escape("; ".join(self.titles), quote=True)
        lines = "".join(f'<div class="rsnn-caption">{html.escape(c)}</div>' for c in self.captions)
        return (f'<figure class="{elem_class}" style="margin:0 0 8px 0">'
                f'<img src="data:image/png;base64,{data}" alt="{alt}" width="{w}" height="{h}" data-min-font-px="{min_px:.2f}" '
                f'style="display:block;width:100%;max-width:{w}px;height:auto">'
                f'<figcaption style="font-size:14px;line-height:1.45;margin-top:4px">{lines}</figcaption></figure>')


def _figure(width: float, height: float, **kw: Any) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kw)


def _names(classes: Optional[Sequence[str]], k: int) -> List[str]:
    return [str(c) for c in (classes or range(k))]


# --- the network's stages for one input --------------------------------------------------------------

def stages_figure(tr: Trace, *, timestep: int, classes: Optional[Sequence[str]] = None) -> AppFigure:
    """Input, first-conv spike maps at ``timestep``, first hidden FC raster and the output vote, on a 2×2 grid."""
    with matplotlib.rc_context(_RC):
        fig = _figure(7.6, 6.0)
        (ax_in, ax_conv), (ax_fc, ax_out) = fig.subplots(2, 2)
        ax_in.imshow(tr.x[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax_in.set_title("(a) input, 28×28")
        ax_in.axis("off")
        convs = _conv_layers(tr.rec)
        T = tr.rec.spikes[-1].shape[0]
        if convs:
            s = tr.rec.spikes[convs[0]][timestep, 0].numpy()
            ax_conv.imshow(_mosaic(s), cmap=matplotlib.colormaps["gray_r"].with_extremes(bad="#c9d6e6"), vmin=0, vmax=1,
                           interpolation="nearest")
            ax_conv.set_title(f"(b) {tr.rec.names[convs[0]]} at t={timestep}: {int(s.sum())} spikes")
            conv_caption = (f"(b) {tr.rec.names[convs[0]]}'s {s.shape[0]} feature maps at time step t={timestep} (the slider), one "
                            "small square per channel: a black pixel is a neuron that spiked at that step")
        else:
            ax_conv.text(0.5, 0.5, "no convolutional layer", ha="center", va="center")
            ax_conv.set_title("(b) no convolutional layer")
            conv_caption = "(b) this model has no convolutional layer"
        ax_conv.axis("off")
        fcs = _fc_layers(tr.rec)
        j = fcs[0] if len(fcs) > 1 else fcs[-1]
        sp = tr.rec.spikes[j][:, 0].numpy()  # [T, N]
        ax_fc.imshow(sp.T, cmap="gray_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                     extent=(-0.5, T - 0.5, sp.shape[1] - 0.5, -0.5))
        ax_fc.axvspan(timestep - 0.5, timestep + 0.5, color="tab:orange", alpha=0.25, lw=0)
        ax_fc.set_xticks(range(T))
        ax_fc.set_xlabel("time step")
        ax_fc.set_ylabel("neuron")
        ax_fc.set_title(f"(c) {tr.rec.names[j]} raster: {int(sp.sum())} spikes")
        counts = tr.rec.spikes[-1][:, 0].sum(0).numpy()
        names = _names(classes, len(counts))
        ax_out.bar(np.arange(len(counts)), counts, color=["tab:green" if k == tr.prediction else "tab:gray" for k in range(len(counts))])
        ax_out.set_xticks(np.arange(len(counts)), names)
        ax_out.set_xlabel("class")
        ax_out.set_ylabel("output spikes")
        ax_out.set_title(f"(d) the vote: predicted {names[tr.prediction]}")
    captions = ["(a) the image after MNIST-style preprocessing (grey levels 0 to 1), fed to the network at every time step",
                conv_caption,
                f"(c) {tr.rec.names[j]}, the first hidden layer: one row per neuron, black = a spike at that step; "
                "the orange column is the chosen step",
                f"(d) output spikes per class summed over all {T} steps: the class with the most spikes (green) is the prediction"]
    return AppFigure(fig, captions)


# --- the attack panel ---------------------------------------------------------------------------------

def attack_images_figure(clean: Trace, adv: Trace, x: np.ndarray, x_adv: np.ndarray, *, eps: float, defense: str = "",
                         label: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> AppFigure:
    """What the network saw, clean and adversarial (after the defense's preprocessing), and the perturbation of the input.

    ``clean``/``adv`` are traces of the views the (defended) model classifies; their predictions are the panel's verdict.
    ``x``/``x_adv`` are the inputs ``[H, W]`` before any defense; the perturbation is their difference.
    """
    k = clean.logits.numel()
    names = _names(classes, k)
    seen = f", after {defense}" if defense else ""
    delta = x_adv - x
    m = float(eps) if eps > 0 else 1.0
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDE_IN, 3.7)
        axes = fig.subplots(1, 3)
        axes[0].imshow(clean.x[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"(a) clean{seen}: predicted {names[clean.prediction]}" + (f" (true {names[label]})" if label is not None else ""))
        axes[1].imshow(adv.x[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[1].set_title(f"(b) adversarial{seen}: predicted {names[adv.prediction]}",
                          color="tab:red" if adv.prediction != clean.prediction else "black")
        im = axes[2].imshow(delta, cmap="RdBu_r", vmin=-m, vmax=m)
        axes[2].set_title(f"(c) perturbation: L∞ {float(np.abs(delta).max()):.3f} of eps {eps:g}")
        cb = fig.colorbar(im, ax=axes[2], fraction=0.05, pad=0.02)
        cb.set_label("change in brightness")
        for a in axes:
            a.axis("off")
    what = f"the image after {defense}, which is what the network classifies" if defense else "the image the network classifies"
    captions = [f"(a) clean: {what}",
                f"(b) adversarial: the attacked image{', after ' + defense if defense else ''}; "
                "its prediction is the verdict above",
                f"(c) the attacker's change to the input (before any defense): red = brighter, blue = darker, white = unchanged; "
                f"the colour scale spans ±eps = ±{eps:g}"]
    return AppFigure(fig, captions)


def vote_figure(clean: Trace, adv: Trace, *, label: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> AppFigure:
    """Output spikes per class, clean vs adversarial, and the running vote over time."""
    sc = clean.rec.spikes[-1][:, 0].numpy()
    sa = adv.rec.spikes[-1][:, 0].numpy()
    k, T = sc.shape[1], sc.shape[0]
    names = _names(classes, k)
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDE_IN, 3.6)
        axes = fig.subplots(1, 2)
        pos = np.arange(k)
        axes[0].bar(pos - 0.2, sc.sum(0), width=0.4, color=_CLEAN, label=f"clean (predicted {names[clean.prediction]})")
        axes[0].bar(pos + 0.2, sa.sum(0), width=0.4, color=_ADV, hatch="//", edgecolor="white",
                    label=f"adversarial (predicted {names[adv.prediction]})")
        axes[0].set_xticks(pos, names)
        axes[0].set_xlabel("class")
        axes[0].set_ylabel("output spikes")
        axes[0].set_title("(a) the vote: output spikes per class")
        axes[0].legend(loc="upper left")
        plot_running_vote(axes[1], clean, adv, names=names, label=label)
        axes[1].set_title("(b) the running vote over time")
    captions = [f"(a) output spikes per class over all {T} steps, clean (blue) and adversarial (red, hatched): most spikes wins",
                "(b) cumulative output spikes of the classes that matter: colour = class, thick solid = clean, dashed = adversarial; "
                "dotted verticals: the adversarial input's leading class changes"]
    return AppFigure(fig, captions)


def raster_figure(clean: Trace, adv: Trace) -> AppFigure:
    """First hidden FC layer: which spikes the attack removed or added; and, per layer, the share of spikes that differ."""
    fcs = _fc_layers(clean.rec)
    i = fcs[0] if len(fcs) > 1 else fcs[-1]
    sc = clean.rec.spikes[i][:, 0].numpy() > 0  # [T, N]
    sa = adv.rec.spikes[i][:, 0].numpy() > 0
    cat = np.zeros(sc.shape, dtype=int)
    cat[sc & sa] = 1
    cat[sc & ~sa] = 2
    cat[~sc & sa] = 3
    cmap = matplotlib.colors.ListedColormap(["white", "#9a9a9a", _CLEAN, _ADV])
    T, N = sc.shape
    rows = layer_distances(clean, adv)
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDE_IN, 3.4)
        ax, ax_l = fig.subplots(1, 2, width_ratios=[3, 1])
        ax.imshow(cat, cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto", interpolation="nearest", extent=(-0.5, N - 0.5, T - 0.5, -0.5))
        ax.set_xlabel("neuron")
        ax.set_ylabel("time step")
        ax.set_yticks(range(T))
        ax.set_title(f"(a) {clean.rec.names[i]} spikes: {int((sc & ~sa).sum())} only clean, {int((~sc & sa).sum())} only adversarial")
        ax.legend(handles=[Patch(color="#9a9a9a", label="both"), Patch(color=_CLEAN, label="only clean"),
                           Patch(color=_ADV, label="only adversarial")], loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3,
                  frameon=False)
        ax_l.barh(np.arange(len(rows)), [100 * r["differing_fraction"] for r in rows], color="tab:purple")
        ax_l.set_yticks(np.arange(len(rows)), [r["layer"] for r in rows])
        ax_l.invert_yaxis()
        ax_l.set_xlabel("spikes that differ (%)")
        ax_l.set_title("(b) change per layer")
    captions = [f"(a) {clean.rec.names[i]}, the first hidden layer, one column per neuron and one row per time step: grey = spiked "
                "on both inputs, blue = only on the clean one, red = only on the adversarial one",
                "(b) per layer, input to output: the share of (neuron, time step) slots whose spike differs between the two inputs"]
    return AppFigure(fig, captions)


def detector_figure(score_clean: float, score_adv: float, threshold: float) -> AppFigure:
    """The detector's scores of the clean and the adversarial input against its threshold (higher = more suspicious)."""
    lo = min(score_clean, score_adv, threshold)
    hi = max(score_clean, score_adv, threshold)
    pad = max(0.6, 0.25 * (hi - lo))
    with matplotlib.rc_context(_RC):
        fig = _figure(WIDE_IN, 2.1)
        ax = fig.subplots()
        ax.axvspan(threshold, hi + pad, color="tab:red", alpha=0.12, lw=0)
        ax.axvline(threshold, color="black", lw=2)
        ax.text(threshold - 0.02 * (hi - lo + 2 * pad), 1.4, "← accepted", va="center", ha="right")
        ax.text(threshold + 0.02 * (hi - lo + 2 * pad), 1.4, f"rejected → (threshold {threshold:.2f})", va="center", ha="left")
        ax.plot([score_clean], [1], "o", ms=11, color=_CLEAN)
        ax.text(score_clean, 0.7, f"clean {score_clean:.2f}", ha="center", va="center", color=_CLEAN)
        ax.plot([score_adv], [0.25], "X", ms=12, color=_ADV)
        ax.text(score_adv, -0.05, f"adversarial {score_adv:.2f}", ha="center", va="center", color=_ADV)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-0.3, 1.65)
        ax.set_yticks([])
        ax.set_xlabel("detector score (higher = more suspicious)")
        ax.set_title("(a) temporal-consistency detector: " + ("adversarial rejected" if score_adv > threshold else "adversarial accepted"))
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
    captions = ["(a) the score measures how unstable the output vote is over time (late decision, changes of the leading class, "
                "time windows that disagree, small margin): higher = more suspicious; an input scoring above the threshold, "
                "set so that 5 % of clean images exceed it, is rejected"]
    return AppFigure(fig, captions)
