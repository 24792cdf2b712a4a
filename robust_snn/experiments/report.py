"""``report.md`` beside sweep results: spec, versions, tables, plots and failed sanity checks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from ..utils import versions, write_text_atomic
from .runner import GROUP, worst_case_rows


def sanity_checks(rows: List[Dict[str, Any]]) -> List[str]:
    """Failed checks over the sweep (empty when all pass)."""
    fails = []
    series: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        series.setdefault(tuple(r[k] for k in GROUP) + (r["attack"],), []).append(r)
    for key, rs in series.items():
        rs = sorted(rs, key=lambda r: r["eps"])
        for a, b in zip(rs, rs[1:]):
            if b["robust_accuracy"] > a["robust_accuracy"] + max(0.02, 2 / max(1, a["n"])):
                fails.append(f"{' / '.join(map(str, key))}: accuracy rises from {100 * a['robust_accuracy']:.1f}% at eps {a['eps']:g} "
                             f"to {100 * b['robust_accuracy']:.1f}% at eps {b['eps']:g}")
        zero = [r for r in rs if r["eps"] == 0]
        if zero and abs(zero[0]["robust_accuracy"] - zero[0]["clean_accuracy"]) > 0.5 / max(1, zero[0]["n"]):
            fails.append(f"{' / '.join(map(str, key))}: eps 0 gives {100 * zero[0]['robust_accuracy']:.2f}% but clean is "
                         f"{100 * zero[0]['clean_accuracy']:.2f}%")
        for r in rs:
            if str(r.get("within_bound")) in ("False", "false"):
                fails.append(f"{' / '.join(map(str, key))} eps {r['eps']:g}: perturbation outside the budget or [0, 1]")
    # a gradient-free attack beating every gradient attack by a margin hints at gradient masking
    by_eps: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        by_eps.setdefault(tuple(r[k] for k in GROUP) + (r["eps"],), []).append(r)
    for key, rs in by_eps.items():
        sq = [r for r in rs if r.get("attack_kind") == "square"]
        grad = [r for r in rs if r.get("attack_kind") not in ("square", None)]
        if sq and grad and sq[0]["robust_accuracy"] + 0.05 < min(r["robust_accuracy"] for r in grad):
            fails.append(f"{' / '.join(map(str, key))}: Square ({100 * sq[0]['robust_accuracy']:.1f}%) beats every gradient attack "
                         f"by more than 5 points: gradients may be masked")
    return fails


def _pct(v: Any) -> str:
    return "" if v is None or v == "" else f"{100 * float(v):.1f}"


def write_report(out: Path, spec: Any, rows: List[Dict[str, Any]], *, complete: bool) -> str:
    worst = worst_case_rows(rows)
    total_s = sum(float(r["seconds"]) for r in rows)
    lines = [f"# Experiment `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += [f"Status: {'complete' if complete else 'INCOMPLETE (rerun the same command to resume)'}; {len(rows)} cells, "
              f"{total_s / 60:.1f} min of attack time in total.", "",
              "Reproduce: `robust-snn sweep " + (str(spec.path) if spec.path else "SPEC.toml") + f" --out {out}`", ""]
    lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions().items()), ""]
    lines += ["## Worst case over attacks (per sample)", "",
              "| model | defense | surrogate | T | seed | eps | n | robust % | 95 % CI | with rejection % | attacks |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for w in sorted(worst, key=lambda w: (w["model"], w["defense"], w["surrogate"], w["num_steps"], w["seed"], w["eps"])):
        lines.append(f"| {w['model']} | {w['defense']} | {w['surrogate']} | {w['num_steps']} | {w['seed']} | {w['eps']:g} | {w['n']} | "
                     f"{_pct(w['robust_accuracy'])} | {_pct(w['ci_low'])}–{_pct(w['ci_high'])} | {_pct(w['robust_accuracy_with_rejection'])} | {w['attacks']} |")
    lines += ["", "## All cells", "",
              "| model | defense | attack | surrogate | T | eps | n | clean % | robust % | 95 % CI | detected % | w/ rejection % | s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['defense']} | {r['attack']} | {r['surrogate']} | {r['num_steps']} | {r['eps']:g} | {r['n']} | "
                     f"{_pct(r['clean_accuracy'])} | {_pct(r['robust_accuracy'])} | {_pct(r['ci_low'])}–{_pct(r['ci_high'])} | "
                     f"{_pct(r.get('detection_rate'))} | {_pct(r.get('robust_accuracy_with_rejection'))} | {float(r['seconds']):.0f} |")
    lines += ["", "## Plots", ""]
    for name in ("accuracy_vs_eps.png", "accuracy_vs_T.png"):
        if (out / name).is_file():
            lines += [f"![{name}]({name})", ""]
    fails = sanity_checks(rows)
    lines += ["## Sanity checks", ""]
    lines += ([f"- FAILED: {f}" for f in fails] if fails else ["All passed: accuracy non-increasing in eps, eps 0 equals clean, "
                                                                "perturbations within budget, and, where Square ran, no sign of gradient masking (Square beating every gradient attack)."])
    lines += ["", "## Spec", "", "```toml", (Path(spec.path).read_text().rstrip() if spec.path else ""), "```", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return str(path)
