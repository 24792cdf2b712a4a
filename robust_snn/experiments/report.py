"""``report.md`` beside sweep results: spec, versions, tables, plots and failed sanity checks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from ..utils import versions, write_text_atomic
from .results import GROUP, worst_case_rows


def _check_rows(row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The evaluate-format rows of one sweep cell (older result files: rebuilt from the cell row)."""
    if row.get("check_rows"):
        return [{"n": row["n"], **r} for r in row["check_rows"]]
    from ..attacks.registry import ATTACKS

    spec = ATTACKS.get(row.get("attack_kind") or "", None)
    ok = str(row.get("within_bound")) not in ("False", "false")
    return [{"attack": row["attack"], "surrogate": row["surrogate"], "norm": "Linf", "eps": row["eps"],
             "robust_accuracy": row["robust_accuracy"], "iterative": bool(spec and spec.iterative),
             "gradient_free": bool(spec and spec.gradient_free), "minimum_norm": bool(spec and spec.minimum_norm),
             "within_bound": ok, "in_range": ok, "cascade": False, "n": row["n"]}]


def sanity_checks(rows: List[Dict[str, Any]]) -> List[str]:
    """Failed checks over the sweep (empty when all pass), per (model, defense, surrogate, T, seed).

    The same checks and tolerances as ``robust-snn attack``
    (:func:`robust_snn.attacks.checks.check_results`), run on the cells' rows.
    """
    import warnings

    from ..attacks.checks import RobustnessWarning, check_results

    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in GROUP), []).append(r)
    fails = []
    for key, rs in groups.items():
        check_rows = [c for r in rs for c in _check_rows(r)]
        zero = [r for r in rs if r["eps"] == 0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RobustnessWarning)
            checks = check_results(check_rows, clean_accuracy=float(zero[0]["clean_accuracy"] if zero else rs[0]["clean_accuracy"]),
                                   n=int(rs[0]["n"]), eps_zero_accuracy=float(zero[0]["robust_accuracy"]) if zero else None,
                                   stochastic=bool(rs[0].get("stochastic", False)))
        fails += [f"{' / '.join(map(str, key))}: {c['name']}: {c['detail']}" for c in checks if not c["passed"]]
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
    lines += ([f"- FAILED: {f}" for f in fails] if fails else [
        "All passed (the checks and tolerances of `robust-snn attack`): eps 0 equals clean, perturbations within budget, "
        "iterative attacks at least as strong as single-step ones, accuracy non-increasing in eps, and, where a gradient-free "
        "attack ran (Square, also as a suite's last stage), no sign of gradient masking."])
    lines += ["", "## Spec", "", "```toml", (Path(spec.path).read_text().rstrip() if spec.path else ""), "```", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return str(path)
