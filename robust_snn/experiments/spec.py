"""Experiment specs: a TOML file naming models, defenses, attacks, eps grid, T and data.

Example (``experiments/mnist-eps.toml``)::

    name = "mnist-eps"
    eps = [0.0, 0.05, 0.1]
    [data]
    limit = 200
    [[models]]
    name = "standard"
    checkpoint = "default"
    [[defenses]]
    name = "blur"
    preprocessors = ["blur:sigma=1.0,kernel=5"]
    [[attacks]]
    name = "pgd"
    steps = 20
    [[attacks]]
    attack = "pgd:steps=50,step_scale=2"   # the spec language of `robust-snn attack --attack`

Relative checkpoint paths are resolved against the spec file's folder, then the
current directory; ``"default"`` is the shipped ``csnn-mnist.pt``.
"""
from __future__ import annotations

import math
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import RobustSNNError

TOP_KEYS = {"name", "description", "eps", "num_steps", "surrogates", "seeds", "data", "run", "models", "defenses", "attacks"}
DATA_KEYS = {"dataset", "split", "limit", "calibration_size"}
RUN_KEYS = {"batch_size", "device", "eot_samples", "samples"}
MODEL_KEYS = {"name", "checkpoint"}
DEFENSE_KEYS = {"name", "preprocessors", "detector", "adaptive"}
ATTACK_KEYS = {"name", "attack", "steps", "queries", "restarts", "eps"}


@dataclass
class ModelEntry:
    name: str
    checkpoint: Optional[str]  # None: the shipped default


@dataclass
class DefenseEntry:
    name: str
    preprocessors: List[str] = field(default_factory=list)
    detector: Optional[str] = None
    adaptive: bool = True


@dataclass
class AttackEntry:
    name: str
    attack: str  # a suite name, an attack name, or an attack spec ``name:key=value,...`` as for ``--attack``
    steps: Optional[int] = None
    queries: Optional[int] = None
    restarts: int = 1
    eps: Optional[List[float]] = None  # overrides the grid for this attack

    @property
    def kind(self) -> str:
        """The registry name: ``attack`` without its ``:key=value`` parameters."""
        return self.attack.partition(":")[0].strip().lower()


@dataclass
class ExperimentSpec:
    """A validated experiment (see module docstring)."""

    name: str
    path: Optional[str]
    description: str
    eps: List[float]
    num_steps: List[Optional[int]]
    surrogates: List[Optional[str]]
    seeds: List[int]
    dataset: Optional[str]
    split: str
    limit: Optional[int]
    calibration_size: int
    batch_size: int
    device: str
    eot_samples: Optional[int]
    samples: Optional[int]
    models: List[ModelEntry]
    defenses: List[DefenseEntry]
    attacks: List[AttackEntry]
    raw: Dict[str, Any] = field(default_factory=dict)


def _unknown(where: str, table: Dict[str, Any], allowed: set, problems: List[str]) -> None:
    for k in sorted(set(table) - allowed):
        problems.append(f"{where}: unknown key {k!r} (allowed: {', '.join(sorted(allowed))})")


def _resolve_checkpoint(value: str, base: Optional[Path]) -> Optional[Path]:
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for root in ([base] if base else []) + [Path.cwd()]:
        if (root / p).is_file():
            return (root / p).resolve()
    return None


def parse_spec(data: Dict[str, Any], *, path: Optional[Path] = None) -> ExperimentSpec:
    """Validate a parsed TOML document; every problem is reported, one per line."""
    from ..attacks.registry import ATTACKS, parse_attack
    from ..attacks.suite import SUITES
    from ..defenses.registry import make_preprocessor, parse_detector_spec
    from ..surrogates import parse_spec as parse_surrogate

    problems: List[str] = []
    base = path.parent if path else None
    _unknown("spec", data, TOP_KEYS, problems)
    name = data.get("name") or (path.stem if path else "experiment")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\"):
        problems.append(f"name must be a plain non-empty string, got {name!r}")

    def number_list(key: str, value: Any, *, lo: float, hi: float, integer: bool = False) -> List[Any]:
        if not isinstance(value, list) or not value:
            problems.append(f"{key} must be a non-empty list")
            return []
        out = []
        for v in value:
            ok = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok or (isinstance(v, float) and math.isnan(v)) or not lo <= v <= hi:
                problems.append(f"{key}: {v!r} is not {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}]")
            else:
                out.append(v)
        return out

    eps = [float(e) for e in number_list("eps", data.get("eps", [0.0, 0.1]), lo=0.0, hi=1.0)]
    num_steps: List[Optional[int]] = [None]
    if "num_steps" in data:
        num_steps = list(number_list("num_steps", data["num_steps"], lo=1, hi=10000, integer=True))
    seeds = list(number_list("seeds", data.get("seeds", [0]), lo=0, hi=2**31 - 1, integer=True))
    surrogates: List[Optional[str]] = [None]
    if "surrogates" in data:
        if not isinstance(data["surrogates"], list) or not data["surrogates"]:
            problems.append("surrogates must be a non-empty list (use \"model\" for the model's own)")
        else:
            surrogates = []
            for s in data["surrogates"]:
                if s in ("model", None):
                    surrogates.append(None)
                    continue
                try:
                    if s != "ensemble":
                        parse_surrogate(s)
                    surrogates.append(s)
                except RobustSNNError as e:
                    problems.append(f"surrogates: {e}")

    d = data.get("data", {})
    if not isinstance(d, dict):
        problems.append("[data] must be a table")
        d = {}
    _unknown("[data]", d, DATA_KEYS, problems)
    split = d.get("split", "test")
    if split not in ("test", "train"):
        problems.append(f"[data] split must be test or train, got {split!r}")
    limit = d.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        problems.append(f"[data] limit must be a positive integer, got {limit!r}")
    calib = d.get("calibration_size", 1000)
    if not isinstance(calib, int) or calib < 20:
        problems.append(f"[data] calibration_size must be an integer >= 20, got {calib!r}")

    r = data.get("run", {})
    if not isinstance(r, dict):
        problems.append("[run] must be a table")
        r = {}
    _unknown("[run]", r, RUN_KEYS, problems)
    batch_size = r.get("batch_size", 256)
    if not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"[run] batch_size must be a positive integer, got {batch_size!r}")
    for key in ("eot_samples", "samples"):
        v = r.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            problems.append(f"[run] {key} must be a positive integer, got {v!r}")

    models: List[ModelEntry] = []
    for i, m in enumerate(data.get("models", [{"name": "default", "checkpoint": "default"}])):
        if not isinstance(m, dict):
            problems.append(f"models[{i}] must be a table")
            continue
        _unknown(f"models[{i}]", m, MODEL_KEYS, problems)
        ck = m.get("checkpoint", "default")
        mname = m.get("name") or (Path(ck).stem if ck != "default" else "default")
        if ck == "default":
            models.append(ModelEntry(mname, None))
            continue
        resolved = _resolve_checkpoint(str(ck), base)
        if resolved is None:
            problems.append(f"models[{i}] ({mname}): checkpoint {ck!r} not found (relative paths are looked up next to the spec, then in the current directory)")
        else:
            models.append(ModelEntry(mname, str(resolved)))

    defenses: List[DefenseEntry] = []
    for i, df in enumerate(data.get("defenses", [{"name": "none"}])):
        if not isinstance(df, dict):
            problems.append(f"defenses[{i}] must be a table")
            continue
        _unknown(f"defenses[{i}]", df, DEFENSE_KEYS, problems)
        pres = df.get("preprocessors", [])
        det = df.get("detector") or None
        try:
            for p in pres:
                make_preprocessor(p)
            if det is not None:
                parse_detector_spec(det)
        except RobustSNNError as e:
            problems.append(f"defenses[{i}]: {e}")
        adaptive = df.get("adaptive", True)
        if not isinstance(adaptive, bool):
            problems.append(f"defenses[{i}]: adaptive must be true or false")
        if not adaptive and not pres and det is None:
            problems.append(f"defenses[{i}]: adaptive = false needs a preprocessor or detector to transfer to")
        defenses.append(DefenseEntry(df.get("name") or "+".join(pres + ([det] if det else [])) or "none", list(pres), det, bool(adaptive)))

    attacks: List[AttackEntry] = []
    # no [[attacks]]: the standard suite, as for `robust-snn attack`
    for i, a in enumerate(data.get("attacks", [{"name": "standard", "attack": "standard"}])):
        if not isinstance(a, dict):
            problems.append(f"attacks[{i}] must be a table")
            continue
        _unknown(f"attacks[{i}]", a, ATTACK_KEYS, problems)
        kind = a.get("attack", a.get("name"))
        if not isinstance(kind, str) or not kind.strip():
            problems.append(f"attacks[{i}]: attack must be an attack name, an attack spec (name:key=value) or a suite, got {kind!r}")
            continue
        kind = kind.strip()
        if kind in SUITES:  # a whole suite as one cell: its per-sample worst case
            if a.get("restarts") not in (None, 1):
                problems.append(f"attacks[{i}] ({kind}): a suite takes no restarts")
            own = [float(e) for e in number_list(f"attacks[{i}].eps", a["eps"], lo=0.0, hi=1.0)] if "eps" in a else None
            attacks.append(AttackEntry(a.get("name") or kind, kind, a.get("steps"), a.get("queries"), 1, own))
            continue
        if kind.partition(":")[0].strip().lower() not in ATTACKS:
            problems.append(f"attacks[{i}]: unknown attack {kind!r}; choose an attack ({', '.join(ATTACKS)}) "
                            f"or a suite ({', '.join(SUITES)})")
            continue
        try:  # `name:key=value` parameters: the same parsing and checks as `robust-snn attack --attack`
            attack_spec, _ = parse_attack(kind)
        except RobustSNNError as e:
            problems.append(f"attacks[{i}]: {e}")
            continue
        if attack_spec.norm != "Linf":
            problems.append(f"attacks[{i}]: sweeps use the L-inf eps grid; {attack_spec.name} is an {attack_spec.norm} attack")
            continue
        for key in ("steps", "queries", "restarts"):
            v = a.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                problems.append(f"attacks[{i}] ({kind}): {key} must be a positive integer, got {v!r}")
        own_eps = None
        if "eps" in a:
            own_eps = [float(e) for e in number_list(f"attacks[{i}].eps", a["eps"], lo=0.0, hi=1.0)]
        attacks.append(AttackEntry(a.get("name") or kind, kind, a.get("steps"), a.get("queries"), int(a.get("restarts", 1) or 1), own_eps))
    if not attacks and "attacks" in data:
        problems.append("attacks is empty")
    if not models and not any(p.startswith("models") for p in problems):
        problems.append("models is empty: name at least one [[models]] entry (checkpoint = \"default\" for the shipped one)")
    if not defenses and not any(p.startswith("defenses") for p in problems):
        problems.append("defenses is empty: leave [[defenses]] out for no defense")
    for kind, label in (("models", models), ("defenses", defenses), ("attacks", attacks)):
        names = [e.name for e in label]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"{kind}: duplicate names {', '.join(dup)}")
    if problems:
        where = f"{path}: " if path else ""
        raise RobustSNNError(where + "invalid experiment spec: " + "; ".join(problems))  # one line, every problem
    return ExperimentSpec(
        name=name, path=str(path) if path else None, description=str(data.get("description", "")), eps=eps, num_steps=num_steps,
        surrogates=surrogates, seeds=[int(s) for s in seeds], dataset=d.get("dataset"), split=split, limit=limit,
        calibration_size=int(calib), batch_size=int(batch_size), device=str(r.get("device", "auto")),
        eot_samples=r.get("eot_samples"), samples=r.get("samples"), models=models, defenses=defenses, attacks=attacks, raw=data,
    )


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a TOML experiment spec."""
    p = Path(path)
    if not p.is_file():
        raise RobustSNNError(f"experiment spec {p} not found")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RobustSNNError(f"{p} is not valid TOML: {e}") from None
    return parse_spec(data, path=p)
