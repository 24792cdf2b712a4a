"""``report.md`` beside sweep results: spec, versions, tables, plots and failed sanity checks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

from ..utils import versions, write_text_atomic
from .results import GROUP, is_event_row, norm_of, worst_case_rows


def _check_rows(row: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The evaluate-format rows of one sweep cell (older result files: rebuilt from the cell row)."""
    if row.get("check_rows"):
        return [{"n": row["n"], **r} for r in row["check_rows"]]
    from ..attacks.registry import ATTACKS

    spec = ATTACKS.get(row.get("attack_kind") or "", None)
    ok = str(row.get("within_bound")) not in ("False", "false")
    return [{"attack": row["attack"], "surrogate": row["surrogate"], "norm": norm_of(row), "eps": row["eps"],
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


def _num(v: Any) -> str:
    return "" if v is None or v == "" else f"{float(v):g}"


#: a table column: its header and how a row's cell is written
Column = Tuple[str, Callable[[Dict[str, Any]], Any]]


def _md_table(columns: Sequence[Column], rows: Iterable[Dict[str, Any]]) -> List[str]:
    """A markdown table: the header, its rule, one line per row, then a blank line."""
    lines = ["| " + " | ".join(head for head, _ in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(str(cell(r)) for _, cell in columns) + " |" for r in rows]
    return lines + [""]


def _ci(r: Dict[str, Any]) -> str:
    return f"{_pct(r['ci_low'])}–{_pct(r['ci_high'])}"


#: the columns every table starts with (the sweep's grid)
_GRID: List[Column] = [("model", lambda r: r["model"]), ("defense", lambda r: r["defense"])]
_SETTING: List[Column] = [("surrogate", lambda r: r["surrogate"]), ("T", lambda r: r["num_steps"])]
_BUDGET: List[Column] = [("threat", norm_of), ("budget", lambda r: f"{r['eps']:g}")]
_L0: List[Column] = [("L0 median", lambda r: _num(r.get("l0_median"))), ("L0 max", lambda r: _num(r.get("l0_max")))]
_ROBUST: List[Column] = [("robust %", lambda r: _pct(r["robust_accuracy"])), ("95 % CI", _ci)]
_N: List[Column] = [("n", lambda r: r["n"])]
_CLEAN: List[Column] = [("clean %", lambda r: _pct(r["clean_accuracy"]))]
_SECONDS: List[Column] = [("s", lambda r: f"{float(r['seconds']):.0f}")]
_SEED: List[Column] = [("seed", lambda r: r["seed"])]
_ATTACKS: List[Column] = [("attacks", lambda r: r["attacks"])]
_ATTACK: List[Column] = [("attack", lambda r: r["attack"])]

WORST_IMAGE_COLUMNS: List[Column] = (_GRID + _SETTING + _SEED + [("eps", lambda r: f"{r['eps']:g}")] + _N + _ROBUST
                                     + [("with rejection %", lambda r: _pct(r["robust_accuracy_with_rejection"]))] + _ATTACKS)
WORST_EVENT_COLUMNS: List[Column] = _GRID + _SETTING + _SEED + _BUDGET + _N + _ROBUST + _L0 + _ATTACKS
CELL_IMAGE_COLUMNS: List[Column] = (_GRID + _ATTACK + _SETTING + [("eps", lambda r: f"{r['eps']:g}")] + _N + _CLEAN + _ROBUST
                                    + [("detected %", lambda r: _pct(r.get("detection_rate"))),
                                       ("w/ rejection %", lambda r: _pct(r.get("robust_accuracy_with_rejection")))] + _SECONDS)
CELL_EVENT_COLUMNS: List[Column] = _GRID + _ATTACK + _SETTING + _BUDGET + _N + _CLEAN + _ROBUST + _L0 + _SECONDS


IMAGE_CHECKS = ("All passed (the checks and tolerances of `robust-snn attack`): eps 0 equals clean, perturbations within budget, "
                "iterative attacks at least as strong as single-step ones, accuracy non-increasing in eps, and, where a gradient-free "
                "attack ran (Square, also as a suite's last stage), no sign of gradient masking.")
EVENT_CHECKS = ("All passed (the checks and tolerances of `robust-snn attack`): budget 0 equals clean, every example within its "
                "event budget (counted exactly) and binary, accuracy non-increasing in the budget, and, where a gradient-free attack "
                "ran (random flips, also as the events suite's last stage), no sign of gradient masking.")


def _event_notes(rows: List[Dict[str, Any]]) -> List[str]:
    """What event rows need said above their table: units, data source, and the warnings of suites that are no claim."""
    from ..attacks.suite import SUITES

    threats = ", ".join(dict.fromkeys(norm_of(r) for r in rows))
    notes = [(f"Event models: a budget is a number of flipped events (threat model {threats}; L0: events added or removed, "
              "add-only: events added, none removed). L0 median / max: over the broken samples, the flipped events of the "
              "smallest example that broke each.")]
    sources = dict.fromkeys(f"{ds}: {src}" for r in rows for ds, src in ((r.get("data") or {}).get("events") or {}).items())
    if sources:
        notes.append("Event data: " + "; ".join(sources) + ".")
    for kind in dict.fromkeys(r.get("attack_kind") for r in rows):
        suite = SUITES.get(kind, None) if isinstance(kind, str) else None
        if suite is not None and not suite.claim and suite.warning:
            notes.append(f"Warning: {suite.warning}.")
    return notes


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
    image_rows = [r for r in rows if not is_event_row(r)]
    event_rows = [r for r in rows if is_event_row(r)]

    def order(w: Dict[str, Any]) -> tuple:
        return (w["model"], w["defense"], w["surrogate"], w["num_steps"], w["seed"], w["eps"])

    if image_rows or not event_rows:
        lines += ["## Worst case over attacks (per sample)", ""]
        lines += _md_table(WORST_IMAGE_COLUMNS, sorted((w for w in worst if not is_event_row(w)), key=order))
    if event_rows:
        lines += ["## Worst case over event attacks (per sample)", ""]
        for note in _event_notes(event_rows):
            lines += [note, ""]
        lines += _md_table(WORST_EVENT_COLUMNS, sorted((w for w in worst if is_event_row(w)), key=order))
    if image_rows or not event_rows:
        lines += ["## All cells", ""]
        lines += _md_table(CELL_IMAGE_COLUMNS, image_rows)
    if event_rows:
        lines += ["## All event cells", ""]
        lines += _md_table(CELL_EVENT_COLUMNS, event_rows)
    lines += ["## Plots", ""]
    for name in ("accuracy_vs_eps.png", "accuracy_vs_T.png", "accuracy_vs_budget.png", "accuracy_vs_T_events.png"):
        if (out / name).is_file():
            lines += [f"![{name}]({name})", ""]
    fails = sanity_checks(rows)
    lines += ["## Sanity checks", ""]
    passed = ([IMAGE_CHECKS] if image_rows or not event_rows else []) + ([EVENT_CHECKS] if event_rows else [])
    lines += [f"- FAILED: {f}" for f in fails] if fails else [" ".join(passed)]
    lines += ["", "## Spec", "", "```toml", (Path(spec.path).read_text().rstrip() if spec.path else ""), "```", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return str(path)
