"""Run an experiment spec cell by cell, resumably, appending one row per finished cell.

Files in the output folder:

* ``results.jsonl`` — one JSON object per finished cell (with per-sample masks), appended and fsynced;
* ``results.csv`` — the same rows without masks (rewritten atomically after each cell);
* ``worst_case.csv`` — per (model, defense, surrogate, T, seed, norm, eps): the per-sample worst case over attacks;
* ``accuracy_vs_eps.png/.svg`` (image models), ``accuracy_vs_budget.png/.svg`` (event models; and
  ``accuracy_vs_T.png/.svg``, ``accuracy_vs_T_events.png/.svg`` when T varies), ``report.md``, ``spec.toml``.

A row's ``eps`` is its budget in its ``norm``'s units: L∞ on the [0, 1] scale for image models
(``norm`` ``"Linf"``), flipped events for event models (``norm`` ``"L0"`` or ``"add-only"``,
the spec's ``threat``), whose rows also carry ``l0_median``/``l0_max`` (flipped events of the
smallest example that broke each broken sample) and ``l0_broken`` (that count per sample, -1: not broken).

Killed at any point (SIGKILL included) and rerun, the runner drops a torn last
line, skips finished cells and ends with every cell exactly once.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


from .. import distributed
from ..errors import RobustSNNError
from ..utils import ensure_writable_dir, progress_bar, write_text_atomic
from .results import append_row, pack_mask, read_rows, write_tables
from .spec import AttackEntry, DefenseEntry, ExperimentSpec, ModelEntry
from .stats import wilson_interval

log = logging.getLogger(__name__)


def _attack_params_label(a: AttackEntry) -> str:
    label = f"steps={a.steps},queries={a.queries},restarts={a.restarts}"
    return label + f",spec={a.attack}" if ":" in a.attack else label  # a changed spec is a new cell, not a resumed one


def cells(spec: ExperimentSpec) -> List[Dict[str, Any]]:
    """All cells in run order; each has a unique ``key``.

    An attack or defense runs on the models of its kind only (image or event); an event
    model's cells take the budget grid (``norm``: the spec's threat model), an image model's the eps grid.
    """
    from ..attacks.registry import ATTACKS

    def needs_detector(kind: str) -> bool:
        return kind in ATTACKS and ATTACKS[kind].needs_detector

    out = []
    for m in spec.models:
        for d in spec.defenses:
            if not d.fits(m):
                continue  # an image defense on an event model or the other way round
            for t in spec.num_steps:
                for seed in spec.seeds:
                    for s in spec.surrogates:
                        for a in spec.attacks:
                            if a.events != m.events:
                                continue  # event attacks on event models, image attacks on image models
                            if needs_detector(a.kind) and (d.detector is None or not d.adaptive):
                                continue  # an attack on the detector needs an adaptive detector defense
                            if a.events:
                                norm, grid = spec.threat, (a.budget if a.budget is not None else spec.budget)
                            else:
                                norm, grid = "Linf", (a.eps if a.eps is not None else spec.eps)
                            for e in grid:
                                budget = f"{e:g}" if norm == "Linf" else f"{norm}:{e:g}"  # image keys as before
                                key = "|".join([m.name, d.name, a.name, _attack_params_label(a), s or "model", budget,
                                                str(t or "model"), str(seed)])
                                out.append({"model": m, "defense": d, "attack": a, "surrogate": s, "eps": float(e), "norm": norm,
                                            "num_steps": t, "seed": seed, "key": key})
    return out


class _Context:
    """Loaded models, defended wrappers and data, reused across cells."""

    def __init__(self, spec: ExperimentSpec, data_dir: Optional[str]) -> None:
        self.spec, self.data_dir = spec, data_dir
        self._models: Dict[Tuple, Any] = {}
        self._defended: Dict[Tuple, Any] = {}
        self._data: Dict[Tuple, Any] = {}

    def model(self, m: ModelEntry, t: Optional[int]):
        from ..checkpoint import load_model

        k = (m.name, t)
        if k not in self._models:
            device = distributed.device_for(self.spec.device)  # under torchrun with CUDA: this rank's GPU
            self._models = {k: load_model(m.checkpoint, device=device, num_steps=t)}  # keep one at a time
            self._defended = {}
        return self._models[k]

    def data(self, model: Any, with_calibration: bool):
        from ..data import load_split
        from ..defenses.registry import calibration_split

        ds = self.spec.dataset or model.config["dataset"]
        events = bool(getattr(model, "events", False))
        t = int(model.num_steps) if events else None  # event frames are binned into the model's T
        k = (ds, with_calibration, t)
        if k not in self._data:
            if with_calibration:
                x, y, calib, _ = calibration_split(model, ds, n=self.spec.calibration_size, split=self.spec.split,
                                                   limit=self.spec.limit, data_dir=self.data_dir)
                self._data[k] = (x, y, calib)
            else:
                x, y = load_split(ds, self.spec.split, data_dir=self.data_dir, limit=self.spec.limit, num_steps=t)
                self._data[k] = (x, y, None)
        return self._data[k]

    def target(self, m: ModelEntry, d: DefenseEntry, t: Optional[int]):
        from ..defenses.registry import build_defended

        model = self.model(m, t)
        x, y, calib = self.data(model, d.detector is not None)
        k = (m.name, d.name, t)
        if k not in self._defended:
            if not d.preprocessors and d.detector is None:
                self._defended[k] = model
            else:
                self._defended[k] = build_defended(model, d.preprocessors, d.detector, calibration=calib)
        return model, self._defended[k], x, y


def data_fingerprint(spec: ExperimentSpec, *, data_dir: Optional[str] = None) -> Dict[str, Any]:
    """What a row's numbers depend on beyond its key: the evaluation data and the detector calibration size.

    With event models, also where their events come from (N-MNIST files under ``data_dir``
    or the synthetic split generated offline): rows of the other source are rerun, not mixed.
    """
    fp: Dict[str, Any] = {"dataset": spec.dataset, "split": spec.split, "limit": spec.limit, "calibration_size": spec.calibration_size}
    if spec.has_events:
        from ..data import data_source

        sets = dict.fromkeys(spec.dataset or m.dataset or "nmnist" for m in spec.models if m.events)
        fp["events"] = {ds: data_source(ds, spec.split, data_dir=data_dir) for ds in sets}
    return fp


def run_cell(ctx: _Context, cell: Dict[str, Any], *, progress: bool = False) -> Dict[str, Any]:
    """Evaluate one cell and return its row."""
    from ..attacks import evaluate

    m, d, a = cell["model"], cell["defense"], cell["attack"]
    model, target, x, y = ctx.target(m, d, cell["num_steps"])
    from ..attacks.suite import SUITES

    is_suite = a.attack in SUITES
    norm = cell.get("norm", "Linf")
    events = norm != "Linf"
    budgets: Dict[str, Any] = {"eps_l0": [cell["eps"]], "threat": norm} if events else {"eps": [cell["eps"]]}
    t0 = time.perf_counter()
    res = evaluate(target, x, y, attacks=None if is_suite else [a.attack], suite=a.attack if is_suite else None, **budgets,
                   steps=a.steps, queries=a.queries, restarts=a.restarts, surrogate=cell["surrogate"],
                   eot_samples=ctx.spec.eot_samples, samples=ctx.spec.samples, batch_size=ctx.spec.batch_size, seed=cell["seed"],
                   checks=False, progress=progress, keep_examples=True, source_model=None if d.adaptive else model,
                   adaptive_detector_attack=False)
    w = res["worst_case"][0]
    correct = res.worst_mask(cell["eps"], norm)
    n = len(y)
    k = int(correct.sum())
    lo, hi = wilson_interval(k, n)
    rs = res["results"]
    row = {
        "model": m.name, "defense": d.name, "detector": d.detector or "", "adaptive": d.adaptive, "attack": a.name,
        "attack_kind": a.kind, "surrogate": cell["surrogate"] or "model", "norm": norm, "eps": cell["eps"],
        "num_steps": int(model.num_steps), "seed": cell["seed"], "n": n, "clean_accuracy": res["clean_accuracy"],
        "robust_accuracy": k / n, "ci_low": lo, "ci_high": hi,
        "success_rate": ((res["clean_predictions"] == y) & ~correct).sum().item() / max(1, int((res["clean_predictions"] == y).sum())),
        "detection_rate": rs[-1].get("detection_rate") if not is_suite else None,
        "robust_accuracy_with_rejection": w.get("robust_accuracy_with_rejection"),
        "clean_rejection_rate": rs[-1].get("clean_rejection_rate"), "within_bound": all(r["within_bound"] and r["in_range"] for r in rs),
        "stochastic": bool(res["stochastic"]),
        # the rows the sanity checks read (robust_snn.attacks.checks.check_results), one per attack or suite stage
        "check_rows": [{k2: r[k2] for k2 in _CHECK_KEYS if k2 in r} for r in rs],
        "seconds": time.perf_counter() - t0, "key": cell["key"], "robust_mask": pack_mask(correct),
    }
    if events:  # flipped events of the smallest example that broke each sample (its worst case over the cell's attacks)
        from ..attacks.evaluate import l0_stats
        from ..attacks.result import result_key

        l0 = res["worst_case_l0"][result_key(norm, cell["eps"])]
        row.update(l0_stats(l0))
        row["l0_broken"] = [int(v) if v != float("inf") else -1 for v in l0.tolist()]
    if d.detector is not None:
        row["defended_mask"] = pack_mask(res.worst_mask(cell["eps"], defended=True))
    return row


#: the keys of an evaluate row that the sanity checks read
_CHECK_KEYS = ("attack", "attack_kind", "surrogate", "norm", "eps", "robust_accuracy", "iterative", "gradient_free", "minimum_norm",
               "within_bound", "in_range", "cascade", "broken", "n")


def run_sweep(spec: ExperimentSpec, out_dir: str | Path, *, resume: bool = True, data_dir: Optional[str] = None,
              progress: bool = True, max_cells: Optional[int] = None, plots: bool = True) -> Dict[str, Any]:
    """Run (or finish) every cell of ``spec`` into ``out_dir``; returns a summary.

    Args:
        resume: skip cells already in ``results.jsonl``; with ``False`` an existing
            results file is moved aside (``results.jsonl.<timestamp>.bak``), never deleted.
        max_cells: stop after this many new cells (for tests and partial runs).

    Under ``torchrun`` every cell's test set is sharded over the ranks (see
    :func:`robust_snn.attacks.evaluate`); rank 0 alone reads the existing results, decides
    what is left, and writes every file, with the same rows a single process writes.
    """
    dd = distributed.init(spec.device)
    out = Path(out_dir)
    jsonl = out / "results.jsonl"
    all_cells = cells(spec)
    fp = data_fingerprint(spec, data_dir=data_dir)
    keys = {c["key"] for c in all_cells}
    rows: List[Dict[str, Any]] = []
    problem = None
    if dd.is_main:  # rank 0 writes every file: it checks the folder before any cell runs, and all ranks stop on its verdict
        try:
            ensure_writable_dir(out, option="--out")
        except RobustSNNError as e:
            problem = str(e)
    problem = distributed.broadcast_object(problem)
    if problem:
        raise RobustSNNError(problem)
    if dd.is_main:
        if not resume and jsonl.exists():
            bak = out / f"results.jsonl.{time.strftime('%Y%m%d-%H%M%S')}.bak"
            jsonl.rename(bak)
            log.warning("--no-resume: previous results moved to %s", bak)
        stored = read_rows(jsonl, repair=True)
        rows = [r for r in stored if isinstance(r, dict) and r.get("key") in keys and r.get("data", fp) == fp]
        stale = len(stored) - len(rows)
        if stale:
            log.warning("%d rows in %s are not cells of this spec or were run on other data (kept in the file, "
                        "ignored in tables and plots)", stale, jsonl)
        if spec.path:
            write_text_atomic(out / "spec.toml", Path(spec.path).read_text())
    done = distributed.broadcast_object({r["key"] for r in rows})  # rank 0's plan, for every rank
    todo = [c for c in all_cells if c["key"] not in done]
    ctx = _Context(spec, data_dir)
    t0 = time.perf_counter()
    new = 0
    bar = progress_bar(todo, enabled=progress and dd.is_main, desc=f"sweep {spec.name}", unit="cell")
    for cell in bar:
        if max_cells is not None and new >= max_cells:
            break
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(model=cell["model"].name, defense=cell["defense"].name, attack=cell["attack"].name,
                            **{"eps" if cell["norm"] == "Linf" else "budget": f"{cell['eps']:g}"})
        row = {**run_cell(ctx, cell, progress=False), "data": fp}
        new += 1
        if dd.is_main:
            append_row(jsonl, row)
            rows.append(row)
            write_tables(out, rows)
    if not dd.is_main:
        return distributed.broadcast_object(None)
    current = rows  # only this spec's cells on this data (filtered when read)
    write_tables(out, current)
    complete = len(current) == len(all_cells)
    files = [str(out / f) for f in ("results.jsonl", "results.csv", "worst_case.csv")]
    if plots and current:
        from .plots import write_plots
        from .report import write_report

        files += write_plots(out, current)
        files.append(write_report(out, spec, current, complete=complete))
    return distributed.broadcast_object({"out": str(out), "cells": len(all_cells), "done": len(current), "new": new,
                                         "complete": complete, "seconds": time.perf_counter() - t0, "files": files})
