"""Accuracy-vs-budget and accuracy-vs-T plots of sweep results (PNG and SVG).

Image models' rows are plotted against L∞ eps (``accuracy_vs_eps``), event models' against
their event budget (``accuracy_vs_budget``), in separate figures when a sweep mixes both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..plotting import plt
from ..utils import save_figure_atomic
from .results import is_event_row, norm_of, worst_case_rows

#: x-axis labels of the budget figures, by norm
XLABELS = {"Linf": "L∞ eps", "L0": "event budget (flipped events)", "add-only": "event budget (added events, add-only)"}


def _panels(rows: List[Dict[str, Any]]) -> List[Tuple[str, str]]:
    seen: List[Tuple[str, str]] = []
    for r in rows:
        k = (r["model"], r["defense"])
        if k not in seen:
            seen.append(k)
    return seen


def accuracy_vs_eps_figure(rows: List[Dict[str, Any]], *, worst_rows=None, num_steps=None, surrogate=None, seed=None):
    """One panel per (model, defense): a line per attack (95 % Wilson band) and the per-sample worst case in bold.

    The x axis is the rows' budget: L∞ eps for image models, the event budget for event models
    (give one kind of rows per figure; :func:`write_plots` splits them).
    """
    sel = [r for r in rows if (num_steps is None or r["num_steps"] == num_steps) and (surrogate is None or r["surrogate"] == surrogate)
           and (seed is None or r["seed"] == seed)]
    panels = _panels(sel)
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False, sharey=True)
    worst = worst_case_rows(sel) if sel and "robust_mask" in sel[0] else worst_rows
    norms = list(dict.fromkeys(norm_of(r) for r in sel)) or ["Linf"]
    xlabel = " / ".join(XLABELS.get(n, f"{n} budget") for n in norms)
    for ax, (m, d) in zip(axes.flat, panels):
        pr = [r for r in sel if r["model"] == m and r["defense"] == d]
        for attack in dict.fromkeys(r["attack"] for r in pr):
            ar = sorted((r for r in pr if r["attack"] == attack), key=lambda r: r["eps"])
            eps = [r["eps"] for r in ar]
            line, = ax.plot(eps, [100 * r["robust_accuracy"] for r in ar], marker="o", ms=3, lw=1.2, label=attack)
            ax.fill_between(eps, [100 * r["ci_low"] for r in ar], [100 * r["ci_high"] for r in ar], color=line.get_color(), alpha=0.15)
            if any(r.get("robust_accuracy_with_rejection") is not None for r in ar):
                ax.plot(eps, [100 * (r["robust_accuracy_with_rejection"] or 0) for r in ar], ls="--", lw=1, color=line.get_color(),
                        label=f"{attack} (with rejection)")
        if worst is not None:
            wr = sorted((w for w in worst if w["model"] == m and w["defense"] == d and w["num_steps"] == pr[0]["num_steps"]
                         and w["surrogate"] == pr[0]["surrogate"] and w["seed"] == pr[0]["seed"]
                         and norm_of(w) == norm_of(pr[0])), key=lambda w: w["eps"])
            if wr and len({r["attack"] for r in pr}) > 1:
                eps = [w["eps"] for w in wr]
                ax.plot(eps, [100 * w["robust_accuracy"] for w in wr], color="black", lw=2.8, label="worst case")
                ax.fill_between(eps, [100 * w["ci_low"] for w in wr], [100 * w["ci_high"] for w in wr], color="black", alpha=0.12)
        ax.set_title(f"{m} / {d}", fontsize=10)
        ax.set_xlabel(xlabel)
    return _finish(fig, axes, len(panels))


def _finish(fig, axes, used: int):
    """Shared axis styling of the panel grids; unused panels hidden."""
    for ax in list(axes.flat)[:used]:
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def accuracy_vs_t_figure(rows: List[Dict[str, Any]]):
    """Robust accuracy vs T: one panel per (model, eps), a line per attack/surrogate (95 % band)."""
    keys = list(dict.fromkeys((r["model"], r["eps"]) for r in rows))
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False, sharey=True)
    for ax, (m, e) in zip(axes.flat, keys):
        pr = [r for r in rows if r["model"] == m and r["eps"] == e]
        for label in dict.fromkeys((r["defense"], r["attack"], r["surrogate"]) for r in pr):
            lr = sorted((r for r in pr if (r["defense"], r["attack"], r["surrogate"]) == label), key=lambda r: r["num_steps"])
            ts = [r["num_steps"] for r in lr]
            name = " / ".join(x for x in label if x not in ("none", "model"))
            line, = ax.plot(ts, [100 * r["robust_accuracy"] for r in lr], marker="o", ms=3, label=name)
            ax.fill_between(ts, [100 * r["ci_low"] for r in lr], [100 * r["ci_high"] for r in lr], color=line.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        what = "budget" if is_event_row(pr[0]) else "eps"
        ax.set_title(f"{m}, {what} = {e:g}" if e > 0 else f"{m}, clean ({what} = 0)", fontsize=10)
        ax.set_xlabel("time steps T")
    return _finish(fig, axes, len(keys))


#: the files :func:`write_plots` may write
PLOT_OUTPUTS = ("accuracy_vs_eps.png", "accuracy_vs_eps.svg", "accuracy_vs_T.png", "accuracy_vs_T.svg",
                "accuracy_vs_budget.png", "accuracy_vs_budget.svg", "accuracy_vs_T_events.png", "accuracy_vs_T_events.svg")


def _save(fig, out: Path, stem: str, files: List[str]) -> None:
    for ext in ("png", "svg"):
        save_figure_atomic(fig, Path(out) / f"{stem}.{ext}", dpi=110)
        files.append(str(Path(out) / f"{stem}.{ext}"))
    plt.close(fig)


def _write_kind(out: Path, rows: List[Dict[str, Any]], files: List[str], *, worst_rows: Optional[List[Dict[str, Any]]], budget_stem: str,
                t_stem: str) -> None:
    """The budget figure (at the middle T when T varies) and, when T varies, the T figure of one kind of rows."""
    ts = sorted({r["num_steps"] for r in rows})
    fig_rows = rows if len(ts) == 1 else [r for r in rows if r["num_steps"] == ts[len(ts) // 2]]
    if len({r["eps"] for r in fig_rows}) > 1 or len(ts) == 1:
        _save(accuracy_vs_eps_figure(fig_rows, worst_rows=worst_rows), out, budget_stem, files)
    if len(ts) > 1:
        _save(accuracy_vs_t_figure(rows), out, t_stem, files)


def write_plots(out: Path, rows: List[Dict[str, Any]], *, worst_rows=None) -> List[str]:
    """Write ``accuracy_vs_eps.{png,svg}`` for image models and ``accuracy_vs_budget.{png,svg}`` for event models
    (and ``accuracy_vs_T.{png,svg}`` / ``accuracy_vs_T_events.{png,svg}`` if T varies); returns paths."""
    files: List[str] = []
    image = [r for r in rows if not is_event_row(r)]
    events = [r for r in rows if is_event_row(r)]
    if image:
        wr = None if worst_rows is None else [w for w in worst_rows if not is_event_row(w)]
        _write_kind(out, image, files, worst_rows=wr, budget_stem="accuracy_vs_eps", t_stem="accuracy_vs_T")
    if events:
        wr = None if worst_rows is None else [w for w in worst_rows if is_event_row(w)]
        _write_kind(out, events, files, worst_rows=wr, budget_stem="accuracy_vs_budget", t_stem="accuracy_vs_T_events")
    return files
