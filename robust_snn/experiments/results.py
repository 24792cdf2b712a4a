"""A sweep's results: the row format, reading and validating results files, and the per-sample worst case.

Used by the runner (which writes rows), the plots and the report (which read them); it
imports none of them.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import RobustSNNError
from ..utils import write_text_atomic
from .stats import wilson_interval

log = logging.getLogger(__name__)

COLUMNS = ["model", "defense", "detector", "adaptive", "attack", "attack_kind", "surrogate", "eps", "num_steps", "seed", "n",
           "clean_accuracy", "robust_accuracy", "ci_low", "ci_high", "success_rate", "detection_rate",
           "robust_accuracy_with_rejection", "clean_rejection_rate", "within_bound", "seconds", "key"]
WORST_COLUMNS = ["model", "defense", "detector", "surrogate", "num_steps", "seed", "eps", "n", "robust_accuracy", "ci_low", "ci_high",
                 "robust_accuracy_with_rejection", "attacks"]
GROUP = ("model", "defense", "surrogate", "num_steps", "seed")
#: the norm of image rows (and of rows written before sweeps took event models, which have no ``norm``)
IMAGE_NORM = "Linf"
#: the columns event rows add to both tables: ``norm`` before ``eps`` (whose value is then the event budget), the L0 after ``ci_high``
EVENT_COLUMNS = {"eps": ["norm"], "ci_high": ["l0_median", "l0_max"]}


def norm_of(row: Dict[str, Any]) -> str:
    """A row's threat model: ``"Linf"`` (image models) or ``"L0"``/``"add-only"`` (event models: ``eps`` is the event budget)."""
    return row.get("norm") or IMAGE_NORM


def is_event_row(row: Dict[str, Any]) -> bool:
    return norm_of(row) != IMAGE_NORM


def columns_for(rows: List[Dict[str, Any]], base: List[str]) -> List[str]:
    """``base``, plus the event columns (``norm``, ``l0_median``, ``l0_max``) when any row is an event row.

    An image-only sweep's tables keep exactly the columns they always had.
    """
    if not any(is_event_row(r) for r in rows):
        return list(base)
    out: List[str] = []
    for c in base:
        if c == "eps":
            out += EVENT_COLUMNS["eps"]
        out.append(c)
        if c == "ci_high":
            out += EVENT_COLUMNS["ci_high"]
    return out



def pack_mask(mask: torch.Tensor) -> str:
    """Per-sample booleans as hex of packed bits (the ``robust_mask`` field of ``results.jsonl``)."""
    return np.packbits(mask.numpy().astype(np.uint8)).tobytes().hex()


def unpack_mask(text: str, n: int) -> np.ndarray:
    """Inverse of the mask encoding in ``results.jsonl``: a bool array of length ``n``."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def read_rows(path: Path, *, repair: bool = False) -> List[Dict[str, Any]]:
    """Rows of ``results.jsonl``; a torn last line (from a kill mid-write) is dropped (and cut off if ``repair``)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: List[Dict[str, Any]] = []
    good_end = 0
    pos = 0
    for line in data.split(b"\n"):
        end = pos + len(line) + 1
        if line.strip():
            if end > len(data):  # no trailing newline: torn
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        good_end = min(end, len(data))
        pos = end
    if repair and good_end < len(data):
        log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", path, len(data) - good_end)
        with open(path, "r+b") as f:
            f.truncate(good_end)
    def key(r: Any) -> Any:
        return r.get("key") if isinstance(r, dict) else None

    last = {key(r): i for i, r in enumerate(rows)}  # a cell rerun on other data supersedes the older row
    return [r for i, r in enumerate(rows) if last[key(r)] == i]


def append_row(path: Path, row: Dict[str, Any]) -> None:
    """Append one row to ``results.jsonl`` and fsync it (a kill leaves at most a torn last line)."""
    line = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _csv_text(rows: List[Dict[str, Any]], columns: List[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def _lower_median(values: List[int]) -> float:
    """The median as ``torch.median`` takes it (the lower middle value of an even count), as ``evaluate`` reports L0."""
    v = sorted(values)
    return float(v[(len(v) - 1) // 2])


def worst_case_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (model, defense, surrogate, T, seed, norm, eps): a sample is robust only if every attack failed on it.

    Event groups also get ``l0_median``/``l0_max``: over the broken samples, the flipped events
    of the smallest example (of any attack) that broke each.
    """
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in GROUP) + (norm_of(r), r["eps"]), []).append(r)
    out = []
    for key, rs in groups.items():
        n = rs[0]["n"]
        mask = np.ones(n, dtype=bool)
        rej = np.ones(n, dtype=bool) if all(r.get("defended_mask") for r in rs) else None
        for r in rs:
            mask &= unpack_mask(r["robust_mask"], n)
            if rej is not None:
                rej &= unpack_mask(r["defended_mask"], n)
        k = int(mask.sum())
        lo, hi = wilson_interval(k, n)
        w = {**{g: rs[0][g] for g in GROUP}, "detector": rs[0]["detector"], "norm": norm_of(rs[0]), "eps": rs[0]["eps"], "n": n,
             "robust_accuracy": k / n, "ci_low": lo, "ci_high": hi,
             "robust_accuracy_with_rejection": (float(rej.mean()) if rej is not None else None),
             "attacks": " ".join(sorted({r["attack"] for r in rs}))}
        if is_event_row(rs[0]):
            per = [r["l0_broken"] for r in rs if r.get("l0_broken")]
            found = [min(v for v in vs if v >= 0) for vs in zip(*per) if any(v >= 0 for v in vs)]
            w.update({"l0_median": _lower_median(found) if found else None, "l0_max": max(found) if found else None})
        out.append(w)
    return out


def write_tables(out: Path, rows: List[Dict[str, Any]]) -> None:
    """Rewrite ``results.csv`` and ``worst_case.csv`` atomically from ``rows``."""
    write_text_atomic(out / "results.csv", _csv_text(rows, columns_for(rows, COLUMNS)))
    write_text_atomic(out / "worst_case.csv", _csv_text(worst_case_rows(rows), columns_for(rows, WORST_COLUMNS)))


#: what each results row must hold, and how to read it from a CSV cell
ROW_FIELDS = {"model": str, "defense": str, "attack": str, "surrogate": str, "eps": float, "num_steps": int, "seed": int,
              "robust_accuracy": float, "ci_low": float, "ci_high": float}
_OPTIONAL_FLOATS = ("clean_accuracy", "success_rate", "seconds", "detection_rate", "robust_accuracy_with_rejection",
                    "clean_rejection_rate", "l0_median", "l0_max")
_OPTIONAL_INTS = ("n",)


def _typed(value: Any, cast: type, where: str, key: str) -> Any:
    if cast is str:
        if not isinstance(value, str):
            raise RobustSNNError(f"{where}: column {key} must be text, got {value!r}")
        return value
    if isinstance(value, bool) or (cast is int and isinstance(value, float) and not value.is_integer()):
        raise RobustSNNError(f"{where}: column {key} must be {'an integer' if cast is int else 'a number'}, got {value!r}")
    try:
        v = cast(float(value)) if cast is int else cast(value)
    except (TypeError, ValueError):
        raise RobustSNNError(f"{where}: column {key} must be {'an integer' if cast is int else 'a number'}, got {value!r}") from None
    if cast is float and not math.isfinite(v):
        raise RobustSNNError(f"{where}: column {key} must be a finite number, got {value!r}")
    return v


def check_row(row: Any, where: str, fields: Dict[str, type] = ROW_FIELDS) -> Dict[str, Any]:
    """One results row with every required field present and typed, or a one-line error naming ``where``."""
    if not isinstance(row, dict):
        raise RobustSNNError(f"{where}: not a robust-snn results row (expected an object, got {type(row).__name__})")
    missing = [k for k in fields if row.get(k) in (None, "")]
    if missing:
        raise RobustSNNError(f"{where}: not a robust-snn results row (missing {', '.join(missing)})")
    out = dict(row)
    for k, cast in fields.items():
        out[k] = _typed(row[k], cast, where, k)
    for keys, cast in ((_OPTIONAL_FLOATS, float), (_OPTIONAL_INTS, int)):
        for k in keys:
            out[k] = None if row.get(k) in (None, "") else _typed(row[k], cast, where, k)
    norm = row.get("norm")
    if norm not in (None, ""):
        from ..threat import THREAT_MODELS

        if not isinstance(norm, str) or norm not in THREAT_MODELS:
            raise RobustSNNError(f"{where}: column norm must name a threat model ({', '.join(THREAT_MODELS)}), got {norm!r}")
    out["norm"] = norm or IMAGE_NORM
    return out


def _read_csv(p: Path, fields: Dict[str, type]) -> List[Dict[str, Any]]:
    try:
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(fields) - set(reader.fieldnames or [])
            if missing:
                raise RobustSNNError(f"{p} is not a robust-snn results table (missing columns: {', '.join(sorted(missing))})")
            return [check_row(r, f"{p} line {i + 2}", fields) for i, r in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise RobustSNNError(f"{p} is not a readable CSV table ({type(e).__name__}); pass a sweep's results.csv") from None


def rows_from_csv(path: str | Path) -> List[Dict[str, Any]]:
    """Read ``results.csv`` back (numbers parsed and checked)."""
    p = Path(path)
    if not p.is_file():
        raise RobustSNNError(f"{p} not found")
    return _read_csv(p, ROW_FIELDS)


def load_results(path: str | Path) -> Tuple[List[Dict[str, Any]], Optional[List[Dict[str, Any]]]]:
    """A sweep's rows from ``results.jsonl`` or ``results.csv`` (with ``worst_case.csv`` beside it), validated.

    Returns ``(rows, worst_rows)``; ``worst_rows`` is ``None`` for JSONL (the per-sample masks
    give the worst case) or when no ``worst_case.csv`` lies beside the CSV.
    """
    p = Path(path)
    if not p.is_file():
        raise RobustSNNError(f"{p} not found; pass a sweep's results.csv or results.jsonl")
    worst = None
    if p.suffix == ".jsonl":
        try:
            rows = [check_row(r, f"{p} row {i + 1}") for i, r in enumerate(read_rows(p))]
        except UnicodeDecodeError:
            raise RobustSNNError(f"{p} is not a robust-snn results file (not text)") from None
    elif p.suffix == ".csv":
        rows = rows_from_csv(p)
        wc = p.with_name("worst_case.csv")
        if wc.is_file():
            worst = _read_csv(wc, {k: v for k, v in ROW_FIELDS.items() if k != "attack"})
    else:
        raise RobustSNNError(f"{p}: expected a sweep's results.csv or results.jsonl")
    if not rows:
        raise RobustSNNError(f"{p} holds no results")
    return rows, worst
