"""What would close the gap between the standard suite and the union? Attack the suite's survivors.

Runs the standard suite on the first ``--limit`` test images of a checkpoint at one L∞ budget,
then each candidate (attack, gradient) pair alone on the images the suite left robust, and
records which images each candidate breaks (indices into the test split). Candidates that break
different images under another random start (``seed``) point to restart variance rather than a
missing attack.

Usage::

    python benchmarks/suite_gap.py --checkpoint checkpoints/csnn-mnist-at-pgd.pt --eps 0.3 --limit 500 \\
        --out benchmarks/results/suite_gap-csnn-mnist-at.json

Resumable: finished candidates are kept in the output file and skipped when rerun.
"""
from __future__ import annotations

import argparse
import time

import torch

CANDIDATES = [
    ("apgd", "atan"), ("apgd:seed=1", "fast_sigmoid:slope=5"), ("apgd-dlr", "fast_sigmoid:slope=5"), ("apgd", "sigmoid"),
    ("apgd", "pdsg"), ("apgd:seed=2", None), ("apgd-dlr", "atan"), ("apgdt", "fast_sigmoid:slope=5"), ("apgdt", "atan"),
    ("apgdt", None),
] + [(f"{a}:steps=25,seed={s}", "fast_sigmoid:slope=5") for s in (1, 2, 3, 4) for a in ("apgd", "apgd-dlr")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from robust_snn.attacks import evaluate
    from robust_snn.utils import write_json_atomic
    from suite_selection import load_run  # benchmarks/ is on sys.path when this script runs

    model, x, y, out, state = load_run(args)
    if "suite" not in state:
        t0 = time.perf_counter()
        res = evaluate(model, x, y, eps=[args.eps], checks=False)
        mask = res.worst_mask(args.eps)
        state["suite"] = {"robust": int(mask.sum()), "seconds": time.perf_counter() - t0,
                          "stages": [r["attack"] for r in res["results"]],
                          "mask": "".join("1" if v else "0" for v in mask.tolist())}
        write_json_atomic(out, state)
    survivors = torch.tensor([c == "1" for c in state["suite"]["mask"]])
    idx = torch.nonzero(survivors).squeeze(1)
    print(f"suite leaves {len(idx)} of {len(y)} robust", flush=True)
    cands = state.setdefault("candidates", {})
    found: set = set()
    for a, g in CANDIDATES:
        key = f"{a}|{g or 'model'}"
        if key not in cands:
            t0 = time.perf_counter()
            r = evaluate(model, x[idx], y[idx], attacks=[a], eps=[args.eps], surrogate=g, checks=False)
            m = r.worst_mask(args.eps)
            cands[key] = {"broke": [int(i) for i in idx[~m].tolist()], "seconds": time.perf_counter() - t0}
            write_json_atomic(out, state)
        found |= set(cands[key]["broke"])
        print(f"{key:<45} broke {cands[key]['broke']}  distinct so far {len(found)}  {cands[key]['seconds'] or 0:.0f} s", flush=True)
    state["distinct_broken"] = sorted(found)
    state["robust_after_all"] = len(idx) - len(found)
    write_json_atomic(out, state)


if __name__ == "__main__":
    main()
