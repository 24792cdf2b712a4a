"""Speed benchmark: robust-snn's layer-by-layer simulation vs the step-by-step snnTorch loop.

Same architecture, same weights, same computation (the logits are asserted equal).
For each T and the batch size it reports training, inference and PGD-10 throughput,
peak memory, the robust-snn / baseline ratio, and achieved GFLOP/s as a fraction of
this machine's fp32 matmul rate measured in the same run.

    python benchmarks/bench.py                    # T = 8 and 25, batch 128, CPU
    python benchmarks/bench.py --quick --json     # tiny smoke run
    python benchmarks/bench.py --device cuda

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of the
process's peak RSS during that measurement, each measurement in a fresh subprocess.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from robust_snn.models import build_model  # noqa: E402
from robust_snn.reference import StepByStepModel  # noqa: E402
from robust_snn.utils import keep_freed_memory  # noqa: E402

MODES = ("train", "infer", "pgd10")


def matmul_gflops(device: torch.device, n: int = 1024, reps: int = 10, trials: int = 5) -> float:
    """Measured fp32 matmul rate (GFLOP/s) of this device: the best of ``trials`` timings.

    The best, not the mean: the rate is the machine's capability, and a shared CPU's
    momentary slowdowns would otherwise inflate the "% of matmul" column.
    """
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_flops(model, num_steps: int, *, layer_by_layer: bool) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass, conv and linear layers only."""
    total = 0.0
    dev = next(model.parameters()).device
    x = torch.zeros(1, model.config["in_channels"], *model.config["image_size"], device=dev)
    h = model.preprocess(x)
    for i, stage in enumerate(model.stages):
        for layer in stage.layers:
            out = layer(h)
            if isinstance(layer, torch.nn.Conv2d):
                k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
                macs = out.numel() * k
            elif isinstance(layer, torch.nn.Linear):
                macs = layer.in_features * layer.out_features
            else:
                macs = 0
            steps = 1 if (i == 0 and layer_by_layer and model.encoder.static) else num_steps
            total += 2.0 * macs * steps
            h = out
        h = (h > 0).float()
    return total


def build(arch_args: Dict[str, Any], num_steps: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(num_steps=num_steps, **arch_args).to(device).eval()
    return model, StepByStepModel(model).eval()


def measure(impl: str, mode: str, arch_args: Dict[str, Any], num_steps: int, batch: int, device: torch.device,
            min_seconds: float) -> Dict[str, Any]:
    """One measurement: images/s for ``mode`` with robust-snn (``ours``) or the baseline."""
    import torchattacks

    keep_freed_memory()  # the CLI's allocator setting, applied to every implementation alike
    model, baseline = build(arch_args, num_steps, device)
    if impl == "ours-unfused":  # layer by layer, LIF through plain autograd (the reference path)
        for lif in model.lif_layers:
            lif.fused = False
    net = baseline if impl == "baseline" else model
    x = torch.rand(batch, model.config["in_channels"], *model.config["image_size"], device=device)
    y = torch.randint(0, model.config["num_classes"], (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    atk = torchattacks.PGD(net, eps=0.1, alpha=0.025, steps=10) if mode == "pgd10" else None

    def once() -> None:
        if mode == "train":
            net.train()
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        elif mode == "infer":
            with torch.inference_mode():
                net(x)
        else:
            atk(x, y)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    once()  # warm-up
    _sync(device)
    n_done, t0 = 0, time.perf_counter()
    while True:
        once()
        n_done += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and n_done >= 2:
            break
    img_s = n_done * batch / elapsed
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    # FLOPs per image: forward (+2x for backward) per model evaluation
    f = forward_flops(model, num_steps, layer_by_layer=(impl != "baseline"))
    per_image = {"train": 3 * f, "infer": f, "pgd10": 10 * 3 * f}[mode]
    return {"impl": impl, "mode": mode, "num_steps": num_steps, "batch": batch, "img_per_s": img_s,
            "peak_mb": peak_mb, "gflops": img_s * per_image / 1e9, "seconds": elapsed}


def check_same_logits(arch_args: Dict[str, Any], num_steps: int, device: torch.device) -> float:
    model, baseline = build(arch_args, num_steps, device)
    x = torch.rand(16, model.config["in_channels"], *model.config["image_size"], device=device)
    with torch.no_grad():
        a, b = model(x), baseline(x)
    diff = (a - b).abs().max().item()
    assert torch.allclose(a, b, atol=1e-4), f"robust-snn and the baseline disagree (max |diff| {diff})"
    return diff


def run_isolated(args: argparse.Namespace, impl: str, mode: str, num_steps: int) -> Dict[str, Any]:
    """Run one measurement in a fresh process so peak memory is its own."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_one", json.dumps(
        {"impl": impl, "mode": mode, "num_steps": num_steps, "batch": args.batch_size, "device": args.device,
         "arch": _arch_args(args), "min_seconds": args.min_seconds})]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _arch_args(args: argparse.Namespace) -> Dict[str, Any]:
    return {"arch": args.arch, "channels": [int(c) for c in args.channels.split(",")],
            "hidden": [int(h) for h in args.hidden.split(",")]}


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", default="8,25", help="time steps T to measure")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--arch", default="csnn")
    p.add_argument("--channels", default="16,32")
    p.add_argument("--hidden", default="256")
    p.add_argument("--min-seconds", type=float, default=3.0, help="measure each case at least this long")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--quick", action="store_true", help="tiny model, batch 16, T=4: a smoke test")
    p.add_argument("--unfused", action="store_true", help="also measure the unfused LIF (plain autograd loop)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._one:
        spec = json.loads(args._one)
        res = measure(spec["impl"], spec["mode"], spec["arch"], spec["num_steps"], spec["batch"],
                      torch.device(spec["device"]), spec["min_seconds"])
        print(json.dumps(res))
        return res
    if args.quick:
        args.channels, args.hidden, args.batch_size, args.steps, args.min_seconds = "4,8", "16", 16, "4", 0.2
    device = torch.device(args.device)
    steps = [int(s) for s in args.steps.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    report: Dict[str, Any] = {
        "device": str(device), "threads": torch.get_num_threads(), "torch": str(torch.__version__),
        "arch": _arch_args(args), "batch": args.batch_size, "matmul_gflops": matmul_gflops(device), "cases": [],
    }
    rate_at_start = report["matmul_gflops"]
    for T in steps:
        report.setdefault("max_logit_diff", {})[str(T)] = check_same_logits(_arch_args(args), T, device)
        for mode in modes:
            ours = run_isolated(args, "ours", mode, T)
            unfused = run_isolated(args, "ours-unfused", mode, T) if args.unfused else None
            base = run_isolated(args, "baseline", mode, T)
            report["cases"].append({
                "mode": mode, "num_steps": T, "ours": ours, "ours_unfused": unfused, "baseline": base,
                "speedup": ours["img_per_s"] / base["img_per_s"],
                "memory_ratio": (ours["peak_mb"] / base["peak_mb"]) if base["peak_mb"] > 0 else None,
            })
    # The rate is measured again at the end and the higher one kept: a shared CPU's slow moment at the
    # start would otherwise understate it and inflate "% of matmul".
    report["matmul_gflops_start_end"] = [rate_at_start, matmul_gflops(device)]
    report["matmul_gflops"] = max(report["matmul_gflops_start_end"])
    for c in report["cases"]:
        c["ours_fraction_of_matmul"] = c["ours"]["gflops"] / report["matmul_gflops"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"device {report['device']} ({report['threads']} threads), torch {report['torch']}, "
              f"fp32 matmul {report['matmul_gflops']:.1f} GFLOP/s, batch {report['batch']}, arch {report['arch']}")
        print(f"{'mode':<7}{'T':>4}{'ours img/s':>12}{'unfused':>9}{'base img/s':>12}{'speedup':>9}{'ours GFLOP/s':>14}"
              f"{'% matmul':>10}{'ours MB':>9}{'base MB':>9}")
        for c in report["cases"]:
            unf = f"{c['ours_unfused']['img_per_s']:>9.1f}" if c["ours_unfused"] else f"{'-':>9}"
            print(f"{c['mode']:<7}{c['num_steps']:>4}{c['ours']['img_per_s']:>12.1f}{unf}{c['baseline']['img_per_s']:>12.1f}"
                  f"{c['speedup']:>8.2f}x{c['ours']['gflops']:>14.1f}{100 * c['ours_fraction_of_matmul']:>9.1f}%"
                  f"{c['ours']['peak_mb']:>9.0f}{c['baseline']['peak_mb']:>9.0f}")
        print("logits identical to the step-by-step snnTorch loop (max |diff|): "
              + ", ".join(f"T={k}: {v:.1e}" for k, v in report["max_logit_diff"].items()))
    return report


if __name__ == "__main__":
    main()
