"""How close is the standard suite to everything robust-snn can throw at a model?

Computes, on the first ``--limit`` test images of a checkpoint at one L∞ budget:

* the **union**: the per-sample worst case over every L∞ attack robust-snn offers
  (FGSM, PGD-20, APGD-CE, APGD-DLR, targeted APGD over all 9 target classes, Square with
  5,000 queries, AutoAttack standard) × every gradient choice (the model's own surrogate and
  every member of ``--surrogate ensemble``, which includes the SNN-specific ASSG and PDSG and the
  rate gradient). EOTPGD equals PGD on a deterministic model and is left out; pgd-tcc needs a
  detector; L2 attacks have another budget. The union is computed as a cascade over the union
  itself: each (attack, gradient) attacks only the samples every earlier pair failed on, which
  gives the same worst case at a fraction of the cost. Each pair's ``broke`` counts the samples
  it alone added.
* the **standard suite** on the same images (``evaluate(..., suite="standard")``), its worst
  case and wall time, and the gap to the union.

Usage::

    python benchmarks/suite_selection.py --checkpoint checkpoints/csnn-mnist.pt --eps 0.1 --limit 500 \\
        --out benchmarks/results/suite_selection-csnn-mnist.json

Resumable: finished pairs are kept in the output file and skipped when rerun.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch


@contextlib.contextmanager
def _stage_seeds(on: bool):
    """While active, stage k of the standard suite draws its random starts from seed + k."""
    from robust_snn.attacks.suite import SUITES

    std = SUITES["standard"]
    if on:
        SUITES["standard"] = dataclasses.replace(std, stages=tuple(dataclasses.replace(st, seed=k) for k, st in enumerate(std.stages)))
    try:
        yield
    finally:
        SUITES["standard"] = std


def load_run(args: argparse.Namespace) -> tuple:
    """``(model, x, y, out, state)``: the checkpoint, its first ``args.limit`` test images, and the
    output file's earlier state (resume) updated with this run's machine facts."""
    torch.set_num_threads(args.threads)
    import robust_snn
    from robust_snn.data import load_split
    from robust_snn.utils import keep_freed_memory

    keep_freed_memory()
    model = robust_snn.load_model(args.checkpoint)
    x, y = load_split(model.config["dataset"], "test", limit=args.limit)
    out = Path(args.out)
    state = json.loads(out.read_text()) if out.is_file() else {}
    state.update({"checkpoint": model.checkpoint_path, "eps": args.eps, "n": len(y),
                  "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
                  "torch": torch.__version__})
    return model, x, y, out, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-union", action="store_true", help="Only time the standard suite.")
    ap.add_argument("--stage-seeds", action="store_true",
                    help="Run the standard suite with its own random-start seed per stage (seed + stage index) instead, "
                         "recorded as standard_stage_seeds.")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from robust_snn.attacks import evaluate
    from robust_snn.surrogates import ENSEMBLE, canonical
    from robust_snn.utils import write_json_atomic

    model, x, y, out, state = load_run(args)
    pairs = state.setdefault("pairs", {})
    own = canonical(model.config["surrogate"])
    grads = ["model"] + [g for g in ENSEMBLE if g == "rate" or canonical(g) != own]
    # strongest first (from the 200-image measurements), so later pairs see few survivors
    order = ["apgd", "apgdt", "apgd-dlr", "pgd", "fgsm"]
    plan = [(a, g) for a in order for g in grads] + [("square", "model"), ("autoattack", "model")]
    robust = torch.ones(len(y), dtype=torch.bool)
    with torch.no_grad():
        robust &= model(x).argmax(1) == y
    clean = robust.float().mean().item()
    if pairs:  # resume: the union after the last finished pair
        robust = torch.tensor([c == "1" for c in list(pairs.values())[-1]["robust_after"]])
    if not args.skip_union:
        for a, g in plan:
            key = f"{a}|{g}"
            if key in pairs:
                continue
            idx = torch.nonzero(robust).squeeze(1)
            t0 = time.perf_counter()
            broke = 0
            after = robust.clone()
            if len(idx):
                res = evaluate(model, x[idx], y[idx], attacks=[a], eps=[args.eps], surrogate=None if g == "model" else g,
                               batch_size=args.batch_size, checks=False)
                mask = res.worst_mask(args.eps)
                after[idx] = mask
                broke = int(len(idx) - mask.sum())
            pairs[key] = {"attacked": int(len(idx)), "broke": broke, "seconds": time.perf_counter() - t0,
                          "robust_after": "".join("1" if v else "0" for v in after.tolist())}
            robust = after
            state["union_robust_accuracy"] = robust.float().mean().item()
            write_json_atomic(out, state)
            print(f"{key:<40} attacked {len(idx):>4}  broke {broke:>3}  union {100 * robust.float().mean():.2f}%  "
                  f"{pairs[key]['seconds']:.0f} s", flush=True)
        state["union_complete"] = len(pairs) >= len(plan)
    t0 = time.perf_counter()
    key = "standard_stage_seeds" if args.stage_seeds else "standard"
    with _stage_seeds(args.stage_seeds):
        res = evaluate(model, x, y, suite="standard", eps=[args.eps], batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    w = res["worst_case"][0]
    state["clean_accuracy"] = clean
    state[key] = {"robust_accuracy": w["robust_accuracy"], "ci_low": w["ci_low"], "ci_high": w["ci_high"], "seconds": wall,
                  "stages": [{k: r[k] for k in ("attack", "attacked", "broken", "robust_accuracy", "seconds")} for r in res["results"]],
                  "checks": [{"name": c["name"], "passed": c["passed"]} for c in res["checks"]]}
    if "union_robust_accuracy" in state:
        state["gap_pp" if key == "standard" else "gap_pp_stage_seeds"] = 100 * (w["robust_accuracy"] - state["union_robust_accuracy"])
    write_json_atomic(out, state)
    summary = {k: v for k, v in state.items() if k != "pairs"}
    summary["pairs_broke"] = {k: v["broke"] for k, v in pairs.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
