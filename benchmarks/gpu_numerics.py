"""GPU numerics of robust-snn's CUDA path, on a shipped model and real test images (issue 19).

On the first ``--limit`` MNIST test images with ``--checkpoint`` (default the shipped
``csnn-mnist.pt``) it measures:

1. **precision**: how many spikes (per layer and in all) and predictions change against strict
   fp32 on the GPU (TF32 off for convolutions and matmuls) with TF32 on, with PyTorch's default
   flags (as found), with bf16 autocast, and with fp32 on the CPU;
2. **graph replay**: :class:`robust_snn.graphs.GraphedClassifier` against the model itself, for
   a batch that fills its bucket exactly and a padded one, through the model's surrogate,
   ``atan`` and the rate gradient: logits equal, input gradients' max difference and sign
   agreement; and PGD-10 images/s with and without graphs on the real model.

Prints one JSON object::

    python benchmarks/gpu_numerics.py --device cuda --limit 1000 > numerics.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from robust_snn import load_model  # noqa: E402
from robust_snn.data import bundled_test_split  # noqa: E402
from robust_snn.graphs import GraphedClassifier  # noqa: E402
from robust_snn.neurons import use_surrogate  # noqa: E402
from robust_snn.utils import strict_fp32  # noqa: E402


#: PyTorch's own TF32 flags (convolutions, matmuls), read before anything changes them
TORCH_DEFAULT_TF32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


@contextlib.contextmanager
def tf32(enabled: Optional[bool]) -> Iterator[None]:
    """TF32 for convolutions and matmuls on (True), off (False) or PyTorch's defaults (None)."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    conv, mm = TORCH_DEFAULT_TF32 if enabled is None else (enabled, enabled)
    torch.backends.cudnn.allow_tf32 = conv
    torch.backends.cuda.matmul.allow_tf32 = mm
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def recorded(model, x: torch.Tensor, *, bf16: bool = False):
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        logits, rec = model(x, record=True)
    return logits.float(), [s.float() for s in rec.spikes]


def precision(model, model_cpu, x_all: torch.Tensor, y_all: torch.Tensor, batch: int) -> Dict[str, Any]:
    modes = {"tf32": dict(flag=True), "torch_default": dict(flag=None), "bf16_autocast": dict(flag=False, bf16=True),
             "cpu_fp32": dict(cpu=True)}
    stats: Dict[str, Dict[str, Any]] = {m: {"flipped": None, "pred_changed": 0, "logits_changed": 0, "correct": 0}
                                        for m in modes}
    strict_correct, total_spikes, n_layers = 0, None, 0
    for a in range(0, len(x_all), batch):
        x, y = x_all[a:a + batch].to(model.mean.device), y_all[a:a + batch].to(model.mean.device)
        with tf32(False):
            ref_logits, ref_spk = recorded(model, x)
        strict_correct += int((ref_logits.argmax(1) == y).sum())
        n_layers = len(ref_spk)
        counts = torch.tensor([float(s.sum()) for s in ref_spk])
        total_spikes = counts if total_spikes is None else total_spikes + counts
        for name, m in modes.items():
            if m.get("cpu"):
                logits, spk = recorded(model_cpu, x.cpu())
                logits, spk = logits.to(x.device), [s.to(x.device) for s in spk]
            else:
                with tf32(m["flag"]):
                    logits, spk = recorded(model, x, bf16=m.get("bf16", False))
            flips = torch.tensor([float((s != r).sum()) for s, r in zip(spk, ref_spk)])
            st = stats[name]
            st["flipped"] = flips if st["flipped"] is None else st["flipped"] + flips
            st["pred_changed"] += int((logits.argmax(1) != ref_logits.argmax(1)).sum())
            st["logits_changed"] += int((logits != ref_logits).any(1).sum())
            st["correct"] += int((logits.argmax(1) == y).sum())
    n = len(x_all)
    out: Dict[str, Any] = {"n": n, "layers": n_layers, "strict_fp32_accuracy": strict_correct / n,
                           "strict_fp32_spikes_per_layer": total_spikes.tolist(),
                           "torch_default_flags": {"cudnn.allow_tf32": TORCH_DEFAULT_TF32[0],
                                                   "cuda.matmul.allow_tf32": TORCH_DEFAULT_TF32[1]}}
    for name, st in stats.items():
        out[name] = {"flipped_spikes_per_layer": st["flipped"].tolist(),
                     "flipped_fraction": float(st["flipped"].sum() / total_spikes.sum().clamp_min(1)),
                     "predictions_changed": st["pred_changed"], "logits_changed": st["logits_changed"],
                     "accuracy": st["correct"] / n}
    return out


def _grad(net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(x), y), x)
    return g


def replay(model, x_all: torch.Tensor, y_all: torch.Tensor) -> Dict[str, Any]:
    graphed = GraphedClassifier(model)
    rows: List[Dict[str, Any]] = []
    for spec in (None, "atan:alpha=2", "rate"):
        with use_surrogate(model, spec):
            for n in (256, 200):  # fills the bucket of 256 exactly; padded to 256
                x, y = x_all[:n].to(model.mean.device), y_all[:n].to(model.mean.device)
                with torch.no_grad():
                    same_logits = float((graphed(x) == model(x)).all(1).float().mean())
                ge, gg = _grad(model, x, y), _grad(graphed, x, y)
                # two gradients of one forward (DeepFool takes one per class): the second must equal the first
                xr = x.clone().requires_grad_(True)
                out = graphed(xr)
                (g1,) = torch.autograd.grad(out[:, 0].sum(), xr, retain_graph=True)
                (g2,) = torch.autograd.grad(out[:, 0].sum(), xr)
                rows.append({"gradient": spec or "model", "batch": n, "logits_equal_fraction": same_logits,
                             "grad_max_abs_diff": float((ge - gg).abs().max()), "grad_max_abs": float(ge.abs().max()),
                             "grad_sign_agreement": float((ge.sign() == gg.sign()).float().mean()),
                             "grad_identical": bool(torch.equal(ge, gg)), "second_backward_identical": bool(torch.equal(g1, g2))})
    return {"rows": rows, "stats": dict(graphed.stats)}


def pgd_speed(model, x_all: torch.Tensor, y_all: torch.Tensor, batch: int = 256, reps: int = 5) -> Dict[str, Any]:
    import torchattacks

    x, y = x_all[:batch].to(model.mean.device), y_all[:batch].to(model.mean.device)
    out: Dict[str, Any] = {"batch": batch}
    for name, net in (("eager", model), ("graphed", GraphedClassifier(model))):
        atk = torchattacks.PGD(net, eps=0.1, alpha=0.025, steps=10)
        adv = atk(x, y)  # warm-up (and capture)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            adv = atk(x, y)
        torch.cuda.synchronize()
        out[f"{name}_img_per_s"] = reps * batch / (time.perf_counter() - t)
        torch.manual_seed(0)  # the same random start for both
        adv = atk(x, y)
        with torch.no_grad():
            out[f"{name}_robust"] = float((model(adv).argmax(1) == y).float().mean())
    out["speedup"] = out["graphed_img_per_s"] / out["eager_img_per_s"]
    return out


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: the shipped csnn-mnist.pt")
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        p.error("this measures the CUDA path: run it with --device cuda on a GPU machine")
    strict_fp32()  # as the CLI runs; the precision part sets the flags it compares itself
    model = load_model(args.checkpoint, device=device).eval()
    model_cpu = load_model(args.checkpoint, device="cpu").eval()
    x, y = bundled_test_split()
    x, y = x[: args.limit], y[: args.limit]
    report: Dict[str, Any] = {"device": torch.cuda.get_device_name(device), "torch": str(torch.__version__),
                              "checkpoint": args.checkpoint or "csnn-mnist.pt (shipped)"}
    for name, fn in (("precision", lambda: precision(model, model_cpu, x, y, args.batch_size)),
                     ("replay", lambda: replay(model, x, y)), ("pgd10", lambda: pgd_speed(model, x, y))):
        try:  # each part on its own: a failure is reported and the others still run
            report[name] = fn()
        except Exception:  # noqa: BLE001
            report[name] = {"error": traceback.format_exc()[-3000:]}
        print(f"{name} done", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
