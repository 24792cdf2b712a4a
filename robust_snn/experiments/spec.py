"""Experiment specs: a TOML file naming models, defenses, attacks, budget grids, T and data.

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

Event models (checkpoints with ``input = "events"``, e.g. ``scnn-nmnist.pt``) are attacked
with event budgets instead (``experiments/nmnist-budget.toml``)::

    budget = [0, 10, 50]          # flipped events (whole numbers >= 0)
    threat = "l0"                 # or "add-only" (events added, never removed)
    [[models]]
    checkpoint = "../checkpoints/scnn-nmnist.pt"
    [[defenses]]
    name = "denoise"
    preprocessors = ["denoise:window=1"]
    [[attacks]]
    name = "events"               # the events suite; or event attacks: attack = "sda", "flip-greedy", ...

Every attack and defense is of one kind, image or event, and runs on the models of its
kind (a sweep may mix both); one that fits no model is refused when the spec is read.
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
from typing import Any, Dict, List, Optional, Tuple

from ..errors import RobustSNNError

TOP_KEYS = {"name", "description", "eps", "budget", "threat", "num_steps", "surrogates", "seeds", "data", "run", "models", "defenses",
            "attacks"}
DATA_KEYS = {"dataset", "split", "limit", "calibration_size"}
RUN_KEYS = {"batch_size", "device", "eot_samples", "samples"}
MODEL_KEYS = {"name", "checkpoint"}
DEFENSE_KEYS = {"name", "preprocessors", "detector", "adaptive"}
ATTACK_KEYS = {"name", "attack", "steps", "queries", "restarts", "eps", "budget"}
#: the event threat models a spec may name (``threat = "l0" | "add-only"``), as ``evaluate(..., threat=...)`` names them
THREATS = {"l0": "L0", "add-only": "add-only"}
#: the grids when the spec gives none
DEFAULT_EPS = [0.0, 0.1]
DEFAULT_BUDGET = [0.0, 10.0]


@dataclass
class ModelEntry:
    name: str
    checkpoint: Optional[str]  # None: the shipped default
    events: bool = False  # the checkpoint's model takes event tensors (``input = "events"``): event budgets, event attacks
    dataset: Optional[str] = None  # the checkpoint's dataset (None: not read, the shipped default's)

    @property
    def kind(self) -> str:
        return "event" if self.events else "image"


@dataclass
class DefenseEntry:
    name: str
    preprocessors: List[str] = field(default_factory=list)
    detector: Optional[str] = None
    adaptive: bool = True
    events: Optional[bool] = None  # filters event tensors (True), images (False), or nothing: fits every model (None)

    def fits(self, model: ModelEntry) -> bool:
        """This defense applies to ``model`` (its preprocessors filter that model's kind of input)."""
        return self.events is None or self.events == model.events


@dataclass
class AttackEntry:
    name: str
    attack: str  # a suite name, an attack name, or an attack spec ``name:key=value,...`` as for ``--attack``
    steps: Optional[int] = None
    queries: Optional[int] = None
    restarts: int = 1
    eps: Optional[List[float]] = None  # overrides the grid for this attack (image attacks)
    events: bool = False  # an event attack or suite (L0 budgets): runs on event models only, over the budget grid
    budget: Optional[List[float]] = None  # overrides the budget grid for this attack (event attacks)

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
    #: event budgets (flipped events) of the event models' cells
    budget: List[float] = field(default_factory=lambda: list(DEFAULT_BUDGET))
    #: the threat model of the event attacks: ``"L0"`` or ``"add-only"`` (the ``norm`` of event rows)
    threat: str = "L0"

    @property
    def has_events(self) -> bool:
        return any(m.events for m in self.models)


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


def _checkpoint_kind(path: Path) -> Tuple[bool, Optional[str]]:
    """``(takes events, dataset)`` from a checkpoint's config, without building the model."""
    from ..checkpoint import read_checkpoint

    config = read_checkpoint(path)["config"]
    return config.get("input", "image") == "events", config.get("dataset")


def _attack_is_event(kind: str) -> bool:
    """An event attack (norm L0) or a suite of event attacks: ``kind`` is a registry or suite name."""
    from ..attacks.registry import ATTACKS
    from ..attacks.suite import SUITES

    if kind in SUITES:
        return all(ATTACKS[st.attack].norm == "L0" for st in SUITES[kind].stages)
    return ATTACKS[kind].norm == "L0"


def parse_spec(data: Dict[str, Any], *, path: Optional[Path] = None) -> ExperimentSpec:
    """Validate a parsed TOML document; every problem is reported, one per line."""
    from ..attacks.registry import ATTACKS, event_attack_names, parse_attack
    from ..attacks.suite import DEFAULT_SUITE, EVENTS_SUITE, SUITES
    from ..data import DATASETS
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

    def budget_list(key: str, value: Any) -> List[float]:
        """Event budgets: whole numbers of events >= 0 (``10`` or ``10.0``)."""
        if not isinstance(value, list) or not value:
            problems.append(f"{key} must be a non-empty list of event budgets (whole numbers of events >= 0)")
            return []
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or not float(v).is_integer():
                problems.append(f"{key}: {v!r} is not a whole number of events >= 0")
            else:
                out.append(float(v))
        return out

    eps = [float(e) for e in number_list("eps", data.get("eps", DEFAULT_EPS), lo=0.0, hi=1.0)]
    budget = budget_list("budget", data["budget"]) if "budget" in data else list(DEFAULT_BUDGET)
    threat = "L0"
    if "threat" in data:
        t = data["threat"]
        threat = THREATS.get(t.strip().lower(), "") if isinstance(t, str) else ""
        if not threat:
            problems.append(f"threat must be one of {', '.join(THREATS)} (the threat model of the event attacks), got {t!r}")
            threat = "L0"
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
    models_ok = True  # every model was found and read: its kind (image or event) is known
    for i, m in enumerate(data.get("models", [{"name": "default", "checkpoint": "default"}])):
        if not isinstance(m, dict):
            problems.append(f"models[{i}] must be a table")
            models_ok = False
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
            models_ok = False
            continue
        try:
            events, ds = _checkpoint_kind(resolved)
        except RobustSNNError as e:
            problems.append(f"models[{i}] ({mname}): {e}")
            models_ok = False
            continue
        models.append(ModelEntry(mname, str(resolved), events, ds))
    has_events = any(m.events for m in models)
    has_images = any(not m.events for m in models)
    event_names = ", ".join(event_attack_names())
    if models_ok and models:  # the grids and the threat model must fit the models
        if "budget" in data and not has_events:
            problems.append("budget sets event budgets (flipped events), but no model takes event tensors: "
                            "give the L-inf budgets of image models with eps = [...]")
        if "threat" in data and not has_events:
            problems.append("threat sets the threat model of event attacks, but no model takes event tensors: leave threat out "
                            "(image models are attacked in L-inf over eps)")
        if "eps" in data and not has_images:
            problems.append("eps sets L-inf budgets of image models, but every model takes event tensors: "
                            "give event budgets (flipped events) with budget = [...]")
        ds_name = d.get("dataset")
        if isinstance(ds_name, str) and ds_name in DATASETS:
            ds_events = DATASETS[ds_name].input == "events"
            wrong = [m.name for m in models if m.events != ds_events]
            if wrong:
                problems.append(f"[data] dataset = {ds_name!r} holds {'event tensors' if ds_events else 'images'}, but "
                                f"{', '.join(wrong)} take{'s' if len(wrong) == 1 else ''} {'images' if ds_events else 'event tensors'}: "
                                "leave dataset out (each checkpoint's own)")

    defenses: List[DefenseEntry] = []
    defenses_ok = True  # no defense is refused for the kind of input it filters
    for i, df in enumerate(data.get("defenses", [{"name": "none"}])):
        if not isinstance(df, dict):
            problems.append(f"defenses[{i}] must be a table")
            continue
        _unknown(f"defenses[{i}]", df, DEFENSE_KEYS, problems)
        pres = df.get("preprocessors", [])
        det = df.get("detector") or None
        filters: Dict[str, bool] = {}  # preprocessor name -> filters event tensors
        try:
            for p in pres:
                pre = make_preprocessor(p)
                if pre is not None:
                    filters[pre.name] = bool(getattr(pre, "events", False))
            if det is not None:
                parse_detector_spec(det)
        except RobustSNNError as e:
            problems.append(f"defenses[{i}]: {e}")
        adaptive = df.get("adaptive", True)
        if not isinstance(adaptive, bool):
            problems.append(f"defenses[{i}]: adaptive must be true or false")
        if not adaptive and not pres and det is None:
            problems.append(f"defenses[{i}]: adaptive = false needs a preprocessor or detector to transfer to")
        dname = df.get("name") or "+".join(pres + ([det] if det else [])) or "none"
        ev_filters = sorted(k for k, v in filters.items() if v)
        im_filters = sorted(k for k, v in filters.items() if not v) + ([str(det).partition(":")[0]] if det else [])
        events: Optional[bool] = None
        if ev_filters and im_filters:
            defenses_ok = False
            problems.append(f"defenses[{i}] ({dname}): {', '.join(im_filters)} filter{'s' if len(im_filters) == 1 else ''} images "
                            f"and {', '.join(ev_filters)} event tensors; no model takes both: make them two defenses")
        elif ev_filters:
            events = True
            if models_ok and models and not has_events:
                defenses_ok = False
                problems.append(f"defenses[{i}] ({dname}): {', '.join(ev_filters)} filters event tensors, but no model takes "
                                "event tensors: use an image defense (blur, quantize, a tcc detector) for image models")
        elif im_filters:
            events = False
            if models_ok and models and not has_images:
                defenses_ok = False
                what = (f"{', '.join(k for k in im_filters if k in filters)} filters images" if any(k in filters for k in im_filters)
                        else f"the {str(det).partition(':')[0]} detector watches image models")
                problems.append(f"defenses[{i}] ({dname}): {what}, but every model takes event tensors: "
                                "use denoise[:window=W] (preprocessors = [\"denoise:window=1\"])")
        defenses.append(DefenseEntry(dname, list(pres), det, bool(adaptive), events))

    attacks: List[AttackEntry] = []
    attacks_ok = True  # every attack was read and fits some model
    # no [[attacks]]: each kind of model gets its default suite, as for `robust-snn attack`
    default_attacks = ([{"name": DEFAULT_SUITE, "attack": DEFAULT_SUITE}] if has_images or not models else []) + \
                      ([{"name": EVENTS_SUITE, "attack": EVENTS_SUITE}] if has_events else [])
    for i, a in enumerate(data.get("attacks", default_attacks)):
        if not isinstance(a, dict):
            problems.append(f"attacks[{i}] must be a table")
            attacks_ok = False
            continue
        _unknown(f"attacks[{i}]", a, ATTACK_KEYS, problems)
        kind = a.get("attack", a.get("name"))
        if not isinstance(kind, str) or not kind.strip():
            problems.append(f"attacks[{i}]: attack must be an attack name, an attack spec (name:key=value) or a suite, got {kind!r}")
            attacks_ok = False
            continue
        kind = kind.strip()
        base_kind = kind.partition(":")[0].strip().lower()
        if kind in SUITES:  # a whole suite as one cell: its per-sample worst case
            if a.get("restarts") not in (None, 1):
                problems.append(f"attacks[{i}] ({kind}): a suite takes no restarts")
        elif base_kind not in ATTACKS:
            problems.append(f"attacks[{i}]: unknown attack {kind!r}; choose an attack ({', '.join(ATTACKS)}) "
                            f"or a suite ({', '.join(SUITES)})")
            attacks_ok = False
            continue
        else:
            try:  # `name:key=value` parameters: the same parsing and checks as `robust-snn attack --attack`
                attack_spec, _ = parse_attack(kind)
            except RobustSNNError as e:
                problems.append(f"attacks[{i}]: {e}")
                attacks_ok = False
                continue
            if attack_spec.norm not in ("Linf", "L0"):
                problems.append(f"attacks[{i}]: sweeps use the L-inf eps grid; {attack_spec.name} is an {attack_spec.norm} attack")
                attacks_ok = False
                continue
            for key in ("steps", "queries", "restarts"):
                v = a.get(key)
                if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                    problems.append(f"attacks[{i}] ({kind}): {key} must be a positive integer, got {v!r}")
        is_event = _attack_is_event(kind if kind in SUITES else base_kind)
        label = a.get("name") or kind
        if models_ok and models and is_event and not has_events:
            attacks_ok = False
            problems.append(f"attacks[{i}] ({label}): an event attack (L0 event budgets), but no model takes event tensors: "
                            f"use an image attack or suite ({DEFAULT_SUITE}) for image models")
        if models_ok and models and not is_event and not has_images:
            attacks_ok = False
            problems.append(f"attacks[{i}] ({label}): an image attack (L-inf eps), but every model takes event tensors: use the "
                            f"events suite (name = \"{EVENTS_SUITE}\") or event attacks ({event_names})")
        own_eps = own_budget = None
        if "eps" in a:
            if is_event:
                problems.append(f"attacks[{i}] ({label}): an event attack takes its own grid as budget = [...] (flipped events), not eps")
            else:
                own_eps = [float(e) for e in number_list(f"attacks[{i}].eps", a["eps"], lo=0.0, hi=1.0)]
        if "budget" in a:
            if not is_event:
                problems.append(f"attacks[{i}] ({label}): an image attack takes its own grid as eps = [...], not budget")
            else:
                own_budget = budget_list(f"attacks[{i}].budget", a["budget"])
        r_value = a.get("restarts", 1)
        restarts = r_value if kind not in SUITES and isinstance(r_value, int) and not isinstance(r_value, bool) and r_value >= 1 else 1
        attacks.append(AttackEntry(label, kind, a.get("steps"), a.get("queries"), restarts, own_eps, is_event, own_budget))
    if not attacks and "attacks" in data:
        problems.append("attacks is empty")
    if not models and not any(p.startswith("models") for p in problems):
        problems.append("models is empty: name at least one [[models]] entry (checkpoint = \"default\" for the shipped one)")
    if not defenses and not any(p.startswith("defenses") for p in problems):
        problems.append("defenses is empty: leave [[defenses]] out for no defense")
    if models_ok and attacks_ok and attacks and defenses:  # every model gets cells (said once: not again after a misfit attack)
        for i, m in enumerate(models):
            if not any(a.events == m.events for a in attacks):
                fix = (f"add the events suite ([[attacks]] name = \"{EVENTS_SUITE}\") or an event attack ({event_names})" if m.events
                       else f"add an image attack or suite (name = \"{DEFAULT_SUITE}\")")
                problems.append(f"models[{i}] ({m.name}): takes {'event tensors' if m.events else 'images'}, but no attack is "
                                f"an {m.kind} attack: {fix}")
            elif defenses_ok and not any(df.fits(m) for df in defenses):
                problems.append(f"models[{i}] ({m.name}): no defense fits this {m.kind} model: add [[defenses]] name = \"none\"")
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
        budget=budget, threat=threat,
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
