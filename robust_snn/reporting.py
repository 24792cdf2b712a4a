"""Tables, files and figures for attack results (used by ``robust-snn attack``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from .utils import atomic_path


def json_ready(result: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    """The JSON-serializable part of :func:`robust_snn.attacks.evaluate`'s result."""
    skip = {"examples", "example_predictions", "clean_predictions", "clean_logits", "detector_scores", "example_rejected",
            "worst_case_masks", "worst_case_defended_masks", "worst_case_l0"}
    return {**extra, **{k: v for k, v in result.items() if k not in skip}}


def _pct_ci(lo: float, hi: float) -> str:
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def format_table(result: Dict[str, Any]) -> str:
    """Human-readable table: one line per attack (or suite stage) and eps, then the worst case and checks."""
    from .attacks.suite import get_suite

    lines: List[str] = []
    ci = result["clean_interval"]
    lines.append(f"n={result['n']}  clean accuracy {100 * result['clean_accuracy']:.2f}% {_pct_ci(ci['ci_low'], ci['ci_high'])}  "
                 f"gradient: {result['surrogate']}" + (f"  EOT samples: {result['eot_samples']}, eval samples: {result['eval_samples']}" if result["stochastic"] else ""))
    if result.get("suite"):
        s = get_suite(result["suite"])
        lines.append(f"suite: {s.name}: {s.description}")
        if not s.claim:
            lines.append(f"WARNING: {s.warning}")
    cascade = any(r.get("cascade") for r in result["results"])
    width = max([len("attack")] + [len(r["attack"]) for r in result["results"]]) + 2
    nw = max([5] + [len(r["norm"]) + 1 for r in result["results"]])
    events = bool(result["results"]) and all("l0_median" in r for r in result["results"])
    # event budgets: the flipped events of the examples (median over the samples a row broke, max over all)
    size_head = f"{'L0 med':>8}{'L0 max':>8}" if events else f"{'Linf max':>9}{'L2 mean':>8}"
    head = (f"{'stage' if cascade else 'attack':<{width}}{'norm':<{nw}}{'eps':>6}{'attacked':>9}{'broken':>8}{'robust':>9}{'95% CI':>15}"
            f"{size_head}{'Δspikes':>9}{'time s':>8}")
    lines.append(head)
    lines.append("-" * len(head))
    for r in result["results"]:
        size = f"{r['l0_median']:>8g}{r['l0_max']:>8}" if events else f"{r['linf_max']:>9.3f}{r['l2_mean']:>8.2f}"
        lines.append(
            f"{r['attack']:<{width}}{r['norm']:<{nw}}{r['eps']:>6g}{r['attacked']:>9}{r['broken']:>8}{100 * r['robust_accuracy']:>8.2f}%"
            f"{_pct_ci(r['ci_low'], r['ci_high']):>15}{size}{r['spike_count_change']:>9.2f}{r['seconds']:>8.1f}"
        )
    if cascade:
        lines.append("(cascade: each stage attacks only the samples still robust after the earlier stages; "
                     "'robust' is the accuracy after the stage)")
    det = result.get("detector")
    if det:
        lines.append(f"detector {det['spec']} (threshold {det['threshold']:.3f}): clean rejection rate "
                     f"{100 * det['clean_rejection_rate']:.2f}% (target {100 * det['fpr_target']:g}%), clean accuracy with rejection "
                     f"{100 * det['clean_accuracy_with_rejection']:.2f}%")
        lines.append(f"  {'attack':<{width}}{'eps':>6}{'detected':>10}{'AUROC':>8}{'robust w/ rejection':>21}")
        for r in result["results"]:
            if "detection_rate" in r:
                dr = "-" if r["detection_rate"] is None else f"{100 * r['detection_rate']:.1f}%"
                au = "-" if r["auroc"] is None else f"{r['auroc']:.3f}"
                lines.append(f"  {r['attack']:<{width}}{r['eps']:>6g}{dr:>10}{au:>8}{100 * r['robust_accuracy_with_rejection']:>20.2f}%")
    lines.append("worst case over attacks (per sample):")
    for w in result["worst_case"]:
        rej = f", with rejection {100 * w['robust_accuracy_with_rejection']:.2f}%" if "robust_accuracy_with_rejection" in w else ""
        l0 = f", L0 of the broken: median {w['l0_median']:g}, max {w['l0_max']}" if "l0_median" in w else ""
        lines.append(f"  {w['norm']:<5} eps={w['eps']:<6g} robust accuracy {100 * w['robust_accuracy']:.2f}% "
                     f"{_pct_ci(w['ci_low'], w['ci_high'])} (95% Wilson, n={w['n']}){rej}{l0}")
    if result["checks"]:
        lines.append("sanity checks:")
        for c in result["checks"]:
            lines.append(f"  [{'ok' if c['passed'] else 'FAIL'}] {c['name']}" + ("" if c["passed"] else f": {c['detail']}"))
    return "\n".join(lines)


#: the files ``attack --out`` may write (see :func:`save_attack_outputs`)
ATTACK_OUTPUTS = ("adversarial.pt", "results.json", "examples.png", "roc.png")


def save_attack_outputs(out_dir: str | Path, result: Dict[str, Any], *, indices: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        model: torch.nn.Module, summary: Dict[str, Any], n_figure: int = 8) -> List[str]:
    """Write ``adversarial.pt``, ``results.json`` and ``examples.png`` atomically into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = result.get("examples", {})
    tensors: Dict[str, Any] = {
        "indices": indices.clone(),
        "labels": y.clone(),
        "clean_predictions": result["clean_predictions"].clone(),
        "adversarial": {},
    }
    for key, x_adv in examples.items():
        # the predictions the results were judged by (averaged over forward draws for stochastic encoders)
        tensors["adversarial"][key] = {"images": x_adv.clone(), "predictions": result["example_predictions"][key].clone()}
    import contextlib
    import json

    scores = result.get("detector_scores") or {}
    names = ["adversarial.pt", "results.json"] + (["examples.png"] if examples else []) + (["roc.png"] if scores else [])
    # All files are written to temporary names first and renamed together at the end,
    # so an interrupt leaves either the complete new set or nothing new.
    with contextlib.ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(out / name)) for name in names}
        torch.save(tensors, tmp["adversarial.pt"])
        tmp["results.json"].write_text(json.dumps(summary, indent=2) + "\n")
        if examples:
            import matplotlib.pyplot as plt

            fig = examples_figure(model, x, y, examples, n=n_figure)
            fig.savefig(tmp["examples.png"], format="png", dpi=100)
            plt.close(fig)
        if scores:
            import matplotlib.pyplot as plt

            from .plotting import roc_figure

            fig = roc_figure(scores, title=(result.get("detector") or {}).get("spec", "detector"))
            fig.savefig(tmp["roc.png"], format="png", dpi=100)
            plt.close(fig)
    files = [str(out / name) for name in names]
    return files


def examples_figure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, examples: Dict[str, torch.Tensor], *, n: int = 8):
    """Clean vs adversarial images (strongest attack/eps shown) with output spike counts."""
    from .plotting import plt

    key = list(examples)[-1]
    x_adv = examples[key]
    changed = torch.nonzero((x_adv - x).flatten(1).abs().amax(1) > 0).squeeze(1)
    idx = (changed if len(changed) else torch.arange(len(x)))[:n]
    device = next(model.parameters()).device
    with torch.no_grad():
        lc = model(x[idx].to(device)).float().cpu()
        la = model(x_adv[idx].to(device)).float().cpu()
    cols = len(idx)
    fig, axes = plt.subplots(3, max(cols, 1), figsize=(1.9 * max(cols, 1), 5.6), squeeze=False)
    for j, i in enumerate(idx.tolist()):
        axes[0, j].imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"y={y[i].item()} pred={lc[j].argmax().item()}", fontsize=8)
        axes[1, j].imshow(x_adv[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[1, j].set_title(f"adv pred={la[j].argmax().item()}", fontsize=8, color="red" if la[j].argmax().item() != y[i].item() else "black")
        k = lc.shape[1]
        pos = np.arange(k)
        axes[2, j].bar(pos - 0.2, lc[j].numpy(), width=0.4, label="clean")
        axes[2, j].bar(pos + 0.2, la[j].numpy(), width=0.4, label="adv", color="tab:red")
        axes[2, j].set_xticks(range(k))
        axes[2, j].tick_params(labelsize=6)
        for a in axes[:2, j]:
            a.axis("off")
    axes[2, 0].set_ylabel("output spikes", fontsize=8)
    axes[2, 0].legend(fontsize=6)
    fig.suptitle(f"clean (top) vs {key} (middle); output spike counts (bottom)", fontsize=9)
    fig.tight_layout()
    return fig
