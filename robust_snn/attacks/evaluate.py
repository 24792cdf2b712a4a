"""Run attacks over an eps grid and report per-attack and worst-case robust accuracy.

The number that counts is ``worst_case``: a sample is robust at eps only if
every attack of that norm failed on it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import RobustSNNError
from ..graphs import CAPTURES, GraphedClassifier
from ..encoders import is_stochastic
from ..evaluation import DEFAULT_STOCHASTIC_SAMPLES
from .. import distributed
from ..distributed import Chunks
from ..stats import fraction, wilson_interval
from ..neurons import use_surrogate
from ..surrogates import ENSEMBLE, canonical
from ..threat import THREAT_MODELS
from .checks import TOL_BOUND, check_convergence, check_model, check_results
from .eot import EOT
from .guard import GradGuard
from .journal import Journal, backend_fingerprint, code_fingerprint, fingerprint, model_fingerprint
from .losses import margins
from .result import EvaluationResult, result_key
from .registry import AttackSpec, attack_params, build_attack, event_attack_names, get_spec, parse_attack
from .suite import Suite, default_suite, get_suite
from ..utils import progress_bar

log = logging.getLogger(__name__)

DEFAULT_EOT_SAMPLES = 8
DEFAULT_EPS_L2 = (1.5,)
#: default L0 event budget (flipped entries) of event attacks
DEFAULT_EPS_L0 = (10.0,)
#: the threat models an event attack can run under (``evaluate(..., threat=...)``, ``attack --threat``): every event
#: attack is built for the norm ``L0``; under ``add-only`` it gets ``params["add_only"] = True`` and its rows that norm
EVENT_THREATS = ("L0", "add-only")


def l0_stats(l0: torch.Tensor) -> Dict[str, Any]:
    """``l0_median``/``l0_max`` of the finite entries of a per-sample L0 (``None`` for both when none is finite)."""
    found = l0[torch.isfinite(l0)]
    if not len(found):
        return {"l0_median": None, "l0_max": None}
    return {"l0_median": float(found.median().item()), "l0_max": int(found.max().item())}


def _surrogates(surrogate: Optional[str]) -> List[Optional[str]]:
    if surrogate is None:
        return [None]
    if surrogate == "ensemble":
        return list(ENSEMBLE)
    return [canonical(surrogate)]


def unique_budgets(values: Sequence[float]) -> List[float]:
    """Budgets as floats, duplicates merged, in the given order."""
    return list(dict.fromkeys(float(v) for v in values))


def with_interval(k: int, n: int) -> Dict[str, Any]:
    """``{"n", "k", "ci_low", "ci_high"}``: the 95 % Wilson interval of ``k / n``."""
    lo, hi = wilson_interval(int(k), int(n))
    return {"n": int(n), "k": int(k), "ci_low": lo, "ci_high": hi}


@dataclass(frozen=True)
class _Job:
    """One attack at one budget: the unit of a row."""

    spec: AttackSpec
    eps: float
    grads: Tuple[Optional[str], ...]
    params: Dict[str, Any]
    label: str
    surrogate: str
    cascade: bool
    #: the threat model of its rows when it is not the spec's own (event attacks under ``add-only``)
    threat_name: Optional[str] = None

    @property
    def norm(self) -> str:
        """The ``norm`` of this job's rows: its threat model's name."""
        return self.threat_name or self.spec.norm


def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attacks: Optional[Sequence[str]] = None,
    suite: Optional[str] = None,
    eps: Sequence[float] = (0.1,),
    eps_l2: Optional[Sequence[float]] = None,
    eps_l0: Optional[Sequence[float]] = None,
    steps: Optional[int] = None,
    queries: Optional[int] = None,
    restarts: int = 1,
    surrogate: Optional[str] = None,
    eot_samples: Optional[int] = None,
    samples: Optional[int] = None,
    batch_size: int = 256,
    seed: int = 0,
    checks: bool = True,
    progress: bool = False,
    keep_examples: bool = False,
    source_model: Optional[torch.nn.Module] = None,
    adaptive_detector_attack: bool = True,
    shard: Optional[bool] = None,
    convergence: bool = False,
    threat: Optional[str] = None,
    graphs: Optional[str] = None,
    journal: Optional[str | os.PathLike] = None,
    journal_note: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Attack ``model`` on ``(x, y)`` with every attack at every budget.

    Args:
        model: a :class:`~robust_snn.models.SpikingClassifier` (or any classifier on [0, 1] images).
        x: images ``[N, C, H, W]`` in [0, 1].
        y: labels ``[N]``.
        attacks: names from :data:`robust_snn.attacks.ATTACKS`; each attacks every
            clean-correct sample on its own (per-attack numbers).
        suite: a suite from :data:`robust_snn.attacks.SUITES` (default ``"standard"`` when
            ``attacks`` is not given): a cascade in which each stage attacks only the
            samples still robust after the earlier stages; ``surrogate`` then applies to
            the stages that use the model's own gradient.
        eps: L∞ budgets on the [0, 1] scale (for L∞ attacks).
        eps_l2: L2 radii for L2 attacks (default 1.5).
        eps_l0: event budgets of event attacks (whole numbers of events; default 10).
        steps: iterations for iterative attacks (default: per attack).
        queries: queries for Square.
        restarts: runs per attack; later runs attack only still-robust samples.
        surrogate: gradient used by attacks (spec, ``"rate"``, ``"ensemble"``,
            or ``None`` for the model's own); the forward pass never changes.
        eot_samples: draws averaged per gradient for stochastic encoders
            (default 8; ignored for deterministic models).
        samples: forward draws averaged to judge predictions of stochastic models (default 8).
        batch_size: images per attack batch. The data is cut into fixed chunks of this
            size; each chunk is attacked on its own with the RNGs reseeded from ``seed`` and
            the chunk's index, so results depend on the data, the seed and the batch size,
            not on which process attacks which chunk.
        seed: seeds the global RNG and the encoder's generator (chunk ``c`` uses
            ``seed + 1000003 * c``; the first chunk uses ``seed`` itself).
        checks: run the sanity checks.
        keep_examples: include ``examples`` (adversarial images per attack/eps) in the result.
        source_model: craft the examples on this model instead (non-adaptive / transfer
            evaluation of a defended ``model``); predictions are always judged on ``model``.
        adaptive_detector_attack: when ``model`` has a detector and the evaluation is
            adaptive, add ``pgd-tcc`` (PGD that also evades the detector) to the attacks.
        shard: split the chunks across the ranks of the ``torch.distributed`` process group
            and sum the per-sample results back (every rank returns the same full result);
            ``None``: whenever a process group with more than one rank is initialized
            (``torchrun``, see :mod:`robust_snn.distributed`). Every rank must pass the same
            full ``x`` and ``y``.
        convergence: Carlini et al.'s "more iterations do not help" check: rerun the last
            gradient stage with twice the steps on the survivors among the first 200 samples
            (largest L∞ budget) and fail the check if it breaks more than 1 % of them.
        threat: the threat model of the event attacks, ``"L0"`` (default: events added or
            removed) or ``"add-only"`` (events added, never removed): every event attack is
            built with ``add_only`` accordingly, and its rows are judged (budget, ``within``)
            and keyed (``norm``, worst case) by that threat model. Only for event models.
        graphs: ``"cuda"``: replay the attacked and judged models' forward passes and input
            gradients as CUDA graphs (:class:`~robust_snn.graphs.GraphedClassifier`: same
            numbers, fewer kernel launches; deterministic models on CUDA, the rest runs as
            usual); ``"eager"``: the same wrapper without graphs (its CPU reference); ``None``: off.
        journal: a folder to record every finished chunk of every attack in, and to load
            them from: rerun an interrupted evaluation with the same folder and it skips what
            is recorded, with exactly the numbers an uninterrupted run gives (on the same
            device type; any number of processes; every rank must pass it). See
            :mod:`robust_snn.attacks.journal`.
        journal_note: what to write into the journal's ``run.json`` for a human (e.g. the command).

    With a detector (``model.detector``, e.g. :class:`~robust_snn.defenses.Defended`),
    every row also reports the detection rate of successful examples, the AUROC of
    detector scores (clean vs successful adversarial), and robust accuracy with
    rejection (an input counts as defended if rejected or classified correctly).

    Returns:
        dict with ``n``, ``clean_accuracy`` (and ``clean_interval``), ``results`` (one dict
        per attack or stage and eps, each with its 95 % Wilson interval), ``worst_case``
        (per norm and eps, with interval), ``checks`` and settings.
    """
    if len(x) != len(y) or len(x) == 0:
        raise RobustSNNError("need a non-empty set of images and as many labels")
    if restarts < 1:
        raise RobustSNNError(f"--restarts must be >= 1, got {restarts}")
    if batch_size < 1:
        raise RobustSNNError(f"--batch-size must be >= 1, got {batch_size}")
    if attacks is not None and suite is not None:
        raise RobustSNNError("give either attacks or a suite, not both")
    the_suite: Optional[Suite] = None
    overrides: List[Dict[str, Any]] = []
    if attacks is None:
        the_suite = get_suite(suite or default_suite(model))
        specs = [get_spec(st.attack) for st in the_suite.stages]
    else:  # names, or specs with hyperparameters ("pgd:steps=50")
        parsed = [parse_attack(a) for a in dict.fromkeys(a.strip().lower() for a in attacks)]
        specs, overrides = [sp for sp, _ in parsed], [o for _, o in parsed]
    if not specs:
        raise RobustSNNError("no attack given")
    detector = getattr(model, "detector", None)
    if any(sp.needs_detector for sp in specs) and detector is None:
        raise RobustSNNError("pgd-tcc attacks a detector: give one (--detector tcc)")
    if any(sp.needs_detector for sp in specs) and source_model is not None:
        raise RobustSNNError("pgd-tcc is an adaptive attack; it cannot run with --no-adaptive")
    if getattr(model, "events", False) and any(sp.threat.name != "L0" for sp in specs):
        raise RobustSNNError("this model takes event tensors; image attacks (L∞, L2) do not apply to events: "
                             f"use the event attacks ({', '.join(event_attack_names())}), "
                             "e.g. --attack pga,flip-random --budget 10,50")
    event_threat = _event_threat(threat, model)
    add_tcc = detector is not None and source_model is None and adaptive_detector_attack and not any(sp.needs_detector for sp in specs)
    eps = unique_budgets(eps)
    eps_l2 = unique_budgets(eps_l2 if eps_l2 is not None else DEFAULT_EPS_L2)
    eps_l0 = unique_budgets(eps_l0 if eps_l0 is not None else DEFAULT_EPS_L0)
    for e in eps_l0:
        THREAT_MODELS[event_threat].check_budget(e)
    if any(sp.threat.name == "L0" for sp in specs) and not getattr(model, "events", False):
        raise RobustSNNError("event attacks (L0 budgets) need a model that takes event tensors (input = 'events')")
    for e in eps:
        THREAT_MODELS["Linf"].check_budget(e)
    for e in eps_l2:
        THREAT_MODELS["L2"].check_budget(e)
    if not bool(torch.isfinite(x).all()):
        raise RobustSNNError("images contain NaN or inf values")
    if float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise RobustSNNError("images must be in [0, 1]")
    grads = _surrogates(surrogate)
    jobs = _jobs(specs, the_suite, eps=eps, eps_l2=eps_l2, eps_l0=eps_l0, grads=grads, surrogate=surrogate, steps=steps, queries=queries,
                 seed=seed, overrides=overrides, event_threat=event_threat)
    stages = list(dict.fromkeys(j.label for j in jobs)) if the_suite is not None else None  # before pgd-tcc is added
    if add_tcc:
        tcc = get_spec("pgd-tcc")
        params = attack_params(tcc, steps=steps, seed=seed)
        jobs += [_Job(tcc, e, tuple(grads), params, tcc.name, surrogate or "model", False) for e in eps]
        log.info("detector present: adding the adaptive attack pgd-tcc")

    if graphs is not None and graphs not in CAPTURES:
        raise RobustSNNError(f"unknown graph backend {graphs!r}; choose from {', '.join(CAPTURES)}")
    for opt, value in (("--eot-samples", eot_samples), ("--samples", samples)):
        if value is not None and value < 1:
            raise RobustSNNError(f"{opt} must be >= 1, got {value}")
    run = _setup(model, x, y, jobs=jobs, detector=detector, source_model=source_model, eot_samples=eot_samples, samples=samples,
                 restarts=restarts, batch_size=batch_size, seed=seed, shard=shard, progress=progress, keep_examples=keep_examples,
                 graphs=graphs)
    if journal is not None:
        run.journal = _open_journal(journal, run, note=journal_note)
    check_list: List[Dict[str, Any]] = []
    convergence_record: Optional[Dict[str, Any]] = None
    try:
        _clean_pass(run)
        if checks:
            xb, yb = run.x[:min(run.n, batch_size)].to(run.device), run.y[:min(run.n, batch_size)].to(run.device)
            job_grads = list(dict.fromkeys(g for j in jobs if not j.spec.gradient_free for g in j.grads)) or [None]
            check_list += check_model(model, run.attacked, xb, yb, eot_samples=run.eot, was_training=run.was_training,
                                      gradients=job_grads)
        outer = progress_bar(jobs, enabled=progress, desc="attacks")
        for job in outer:
            outer.set_postfix(attack=job.label, eps=f"{job.eps:g}")
            _run_job(run, job)
        if checks and run.eps_zero_acc is None:
            _eps_zero_probe(run, batch_size=batch_size)
        if convergence:
            convergence_record = _convergence(jobs, run.robust_masks, run.x, run.y, run.clean_logits, restarts=restarts,
                                              batch_size=batch_size, **run.common())
    finally:
        model.train(run.was_training)
    if checks:
        check_list += check_results(run.results, clean_accuracy=run.eps_zero_ref, n=run.n, eps_zero_accuracy=run.eps_zero_acc,
                                    stochastic=run.stochastic)
    if convergence_record is not None:
        check_list.append(check_convergence(**convergence_record))
    out = _summary(run, check_list, surrogate=surrogate, suite=the_suite, stages=stages)
    if run.journal is not None:
        out["journal"] = _journal_stats(run)
    if getattr(model, "events", False):
        out["threat"] = event_threat
    return out


def _event_threat(threat: Optional[str], model: torch.nn.Module) -> str:
    """The threat model of the event attacks: ``"L0"`` or ``"add-only"`` (typed any case), only for event models."""
    if threat is None:
        return "L0"
    name = {t.lower(): t for t in EVENT_THREATS}.get(str(threat).strip().lower())
    if name is None:
        raise RobustSNNError(f"unknown event threat model {threat!r}; choose from: {', '.join(t.lower() for t in EVENT_THREATS)}")
    if not getattr(model, "events", False):
        raise RobustSNNError(f"the threat model {name} is for event models (L0 event budgets); this model takes images, "
                             "whose threat models are L∞ (eps) and L2 (eps_l2): leave the event threat model out")
    return name


@dataclass
class _Run:
    """One evaluation: what is fixed before the first attack, and what the jobs found so far."""

    model: torch.nn.Module
    crafter: torch.nn.Module
    attacked: torch.nn.Module  # what gradient attacks see (EOT over encoder draws)
    judge: torch.nn.Module  # how predictions are judged (averaged forward draws)
    detector: Any
    source_model: Optional[torch.nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    jobs: List[_Job]
    chunks: Chunks
    device: torch.device
    seed: int
    restarts: int
    eot: int
    n_eval: int
    stochastic: bool
    was_training: bool
    n_classes: int
    progress: bool
    keep_examples: bool
    # the clean pass
    clean_logits: Optional[torch.Tensor] = None
    clean_correct: Optional[torch.Tensor] = None
    clean_acc: float = 0.0
    clean_seconds: float = 0.0
    clean_scores: Optional[torch.Tensor] = None
    clean_rejected: Optional[torch.Tensor] = None
    # the attacks
    results: List[Dict[str, Any]] = field(default_factory=list)
    robust_masks: Dict[tuple, torch.Tensor] = field(default_factory=dict)
    rejection_masks: Dict[tuple, torch.Tensor] = field(default_factory=dict)
    #: event budgets: per sample, the fewest flipped events of an example that broke it (inf: none did)
    l0_broken: Dict[tuple, torch.Tensor] = field(default_factory=dict)
    examples: Dict[str, torch.Tensor] = field(default_factory=dict)
    example_predictions: Dict[str, torch.Tensor] = field(default_factory=dict)
    examples_scores: Dict[str, tuple] = field(default_factory=dict)
    examples_rejected: Dict[str, torch.Tensor] = field(default_factory=dict)
    eps_zero_acc: Optional[float] = None
    eps_zero_ref: float = 0.0
    #: the graph backend attacks and judging ran through (None: the models themselves)
    graphs: Optional[str] = None
    graph_wrappers: List[GraphedClassifier] = field(default_factory=list)
    #: finished chunks on disk (``evaluate(journal=...)``)
    journal: Optional[Journal] = None

    @property
    def n(self) -> int:
        return len(self.x)

    def reseed(self, chunk: int = 0) -> None:
        """RNGs of chunk ``chunk`` (torch and the model's encoder): results independent of sharding."""
        s = self.seed + CHUNK_SEED_STRIDE * chunk
        torch.manual_seed(s)
        encoders = [getattr(m, "encoder", None) for m in (self.model, self.source_model) if m is not None]
        for enc in dict.fromkeys(e for e in encoders if e is not None and hasattr(e, "reseed")):
            enc.reseed(s)  # a transfer source with an encoder of its own too: its draws must not run on across chunks

    def common(self) -> Dict[str, Any]:
        """The keyword arguments every :func:`_attack_all` call shares."""
        return dict(model=self.crafter, attacked=self.attacked, judge=self.judge, n_classes=self.n_classes, eot=self.eot,
                    device=self.device, reseed=self.reseed)


def _setup(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, jobs: List[_Job], detector: Any,
           source_model: Optional[torch.nn.Module], eot_samples: Optional[int], samples: Optional[int], restarts: int,
           batch_size: int, seed: int, shard: Optional[bool], progress: bool, keep_examples: bool,
           graphs: Optional[str] = None) -> _Run:
    """Models in eval mode, EOT wrappers, sharding chunks; nothing computed yet."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    stochastic = is_stochastic(model)
    eot = (DEFAULT_EOT_SAMPLES if eot_samples is None else int(eot_samples)) if stochastic else 1
    n_eval = (DEFAULT_STOCHASTIC_SAMPLES if samples is None else int(samples)) if stochastic else 1
    crafter = model if source_model is None else source_model
    if source_model is not None:
        source_model.eval()
    x, y = x.cpu(), y.cpu()
    dist_info = distributed.info()
    sharded = dist_info.enabled if shard is None else (bool(shard) and dist_info.enabled)
    chunks = Chunks(len(x), batch_size, rank=dist_info.rank if sharded else 0, world=dist_info.world if sharded else 1)
    # attacks, judging and the sanity checks given ``attacked`` replay graphs; detectors and surrogate switches act on the
    # models themselves (the graphs are keyed by the surrogate in use)
    graphed_crafter, graphed_model = crafter, model
    if graphs:
        graphed_crafter = GraphedClassifier(crafter, backend=graphs).eval()
        graphed_model = graphed_crafter if crafter is model else GraphedClassifier(model, backend=graphs).eval()
    return _Run(model=model, crafter=crafter, attacked=EOT(graphed_crafter, samples=eot).eval(),
                judge=EOT(graphed_model, samples=n_eval).eval(),
                detector=detector, source_model=source_model, x=x, y=y, jobs=jobs, chunks=chunks, device=device, seed=seed,
                restarts=restarts, eot=eot, n_eval=n_eval, stochastic=stochastic, was_training=was_training,
                n_classes=int(getattr(model, "config", {}).get("num_classes", 0) or 0), progress=progress,
                keep_examples=keep_examples, graphs=graphs,
                graph_wrappers=list(dict.fromkeys([graphed_crafter, graphed_model])) if graphs else [])


def _open_journal(root: str | os.PathLike, run: _Run, *, note: Optional[Dict[str, Any]]) -> Journal:
    """The journal of this evaluation: its folder is named by everything that decides the results."""
    from .. import __version__

    detector = run.detector
    # the data is part of each chunk's key instead: a run on the first N images and one on all share their first chunks
    key = fingerprint("evaluate", code_fingerprint(), model_fingerprint(run.model), model_fingerprint(run.source_model),
                      None if detector is None else (detector.spec(), float(detector.threshold)), ("seed", run.seed),
                      ("batch", len(run.chunks.all[0]) if run.chunks.all else 0), ("eot", run.eot), ("judge", run.n_eval),
                      backend_fingerprint(run.model, run.source_model, device=run.device, graphs=run.graphs))
    j = Journal(root, key, describe={"robust_snn": __version__, "seed": run.seed, **(note or {})})
    log.info("journal: %s", j.dir)
    return j


def _journal_stats(run: _Run) -> Dict[str, Any]:
    """The journal's folder and its reused/written chunks, summed over every rank."""
    assert run.journal is not None
    reused, written = (run.journal.reused, run.journal.written) if run.chunks.world == 1 else \
        distributed.sum_floats([float(run.journal.reused), float(run.journal.written)])
    return {"dir": str(run.journal.dir), "reused_chunks": int(reused), "written_chunks": int(written)}


def _clean_pass(run: _Run) -> None:
    """Clean logits, accuracy and (with a detector) clean scores."""
    chunks, x = run.chunks, run.x
    t0 = time.perf_counter()
    with torch.no_grad():
        run.clean_logits = chunks.gather(chunks.map(lambda a, b: run.judge(x[a:b].to(run.device)).float().cpu(), run.reseed))
    if not run.n_classes:
        run.n_classes = run.clean_logits.shape[1]
    run.clean_seconds = chunks.wall(time.perf_counter() - t0)
    run.clean_correct = run.clean_logits.argmax(1) == run.y
    run.clean_acc = fraction(run.clean_correct)
    run.eps_zero_ref = run.clean_acc
    if run.detector is not None:
        run.clean_scores = _detector_scores(run.model, x, chunks, run.reseed)
        run.clean_rejected = run.clean_scores > float(run.detector.threshold)


def _run_job(run: _Run, job: _Job) -> None:
    """Attack with one job, judge it, and add its row, masks and examples to ``run``."""
    spec, e = job.spec, job.eps
    x, y, n, chunks = run.x, run.y, run.n, run.chunks
    clean_correct, clean_logits = run.clean_correct, run.clean_logits
    key = (job.norm, e)
    robust_masks = run.robust_masks
    active = robust_masks.get(key) if job.cascade else None
    t1 = time.perf_counter()
    reused_before = 0 if run.journal is None else run.journal.reused
    # a minimum-L0 event attack (SpikeFool) reports the size of what it found, within the budget or not
    found_l0 = torch.full((n,), float("inf")) if spec.minimum_norm and job.norm in EVENT_THREATS else None
    x_adv, adv_logits = _attack_all(spec, job.params, e, x, y, clean_logits, grads=job.grads, restarts=run.restarts,
                                    chunks=chunks, progress=run.progress, active=active, threat_name=job.threat_name,
                                    found_l0=found_l0, journal=run.journal, **run.common())
    x_adv, adv_logits = chunks.gather(x_adv), chunks.gather(adv_logits)
    if found_l0 is not None:
        found_l0 = chunks.gather(found_l0)
    seconds = chunks.wall(time.perf_counter() - t1)
    correct = adv_logits.argmax(1) == y
    cumulative = correct if key not in robust_masks else (robust_masks[key] & correct)
    # what this job broke: of the clean-correct samples (an attack of its own), of the survivors (a cascade stage)
    robust_before = robust_masks.get(key, clean_correct) if job.cascade else clean_correct
    linf = THREAT_MODELS["Linf"].distance(x_adv, x)
    l2 = THREAT_MODELS["L2"].distance(x_adv, x)
    threat = THREAT_MODELS[job.norm]
    bound = threat.distance(x_adv, x)
    # perturbation statistics over the samples this job attacked (a cascade stage: its survivors only)
    stat_mask = clean_correct if active is None else (clean_correct & active)
    attacked_any = bool(stat_mask.any())
    shown = cumulative if job.cascade else correct  # a cascade stage reports the accuracy after it
    row = {
        "attack": job.label,
        "attack_kind": spec.name,
        "norm": job.norm,
        "eps": e,
        "surrogate": job.surrogate,
        "params": dict(job.params),
        "restarts": run.restarts,
        "eot_samples": run.eot,
        "clean_accuracy": run.clean_acc,
        "robust_accuracy": fraction(shown),
        **with_interval(int(shown.sum()), n),
        "cascade": job.cascade,
        "attacked": int(stat_mask.sum()),
        "broken": int((robust_before & ~correct).sum()),
        "success_rate": ((clean_correct & ~correct).sum().item() / max(1, clean_correct.sum().item())),
        "linf_mean": linf[stat_mask].mean().item() if attacked_any else 0.0,
        "linf_max": linf.max().item(),
        "l2_mean": l2[stat_mask].mean().item() if attacked_any else 0.0,
        "l2_max": l2.max().item(),
        "spike_count_change": (adv_logits - clean_logits).abs().sum(1)[stat_mask].mean().item() if attacked_any else 0.0,
        "seconds": seconds,
        "img_per_s": n / seconds if seconds > 0 else float("nan"),
        "within_bound": bool((bound <= e + TOL_BOUND).all().item()),
        "in_range": threat.in_domain(x_adv),
        "iterative": spec.iterative,
        "gradient_free": spec.gradient_free,
        "minimum_norm": spec.minimum_norm,
        "adaptive": run.source_model is None,
    }
    defended_mask = correct
    name = result_key(job.label, e)
    detector = run.detector
    if detector is not None:
        adv_scores = _detector_scores(run.model, x_adv, chunks, run.reseed)
        rejected = adv_scores > float(detector.threshold)
        success = clean_correct & ~correct
        defended_mask = correct | rejected
        row.update({
            "detection_rate": fraction(rejected[success]) if success.any() else None,
            "auroc": _auroc(run.clean_scores[clean_correct], adv_scores[success]) if success.any() and clean_correct.any() else None,
            "robust_accuracy_with_rejection": fraction(defended_mask),
            "clean_rejection_rate": fraction(run.clean_rejected),
        })
        if run.keep_examples:
            run.examples_scores[name] = (run.clean_scores[clean_correct], adv_scores[success])
            run.examples_rejected[name] = rejected
    if job.norm in EVENT_THREATS:  # flipped events of the examples that broke a sample (over the attacked ones if none did)
        flips = THREAT_MODELS["L0"].distance(x_adv, x)  # the add-only distance is inf where an event was removed
        l0 = flips[stat_mask & ~correct] if bool((stat_mask & ~correct).any()) else flips[stat_mask]
        row.update({"l0_max": int(flips.max().item()), "l0_median": float(l0.median().item()) if len(l0) else 0.0})
        if found_l0 is not None:  # over the samples it attacked: what it found, also beyond the budget (failures there)
            f = found_l0[stat_mask]
            f = f[torch.isfinite(f)]
            row.update({"found_rate": len(f) / max(1, int(stat_mask.sum())),
                        "found_l0_median": float(f.median().item()) if len(f) else None})
        broke = clean_correct & ~correct
        best = run.l0_broken.get(key, torch.full_like(flips, float("inf")))
        run.l0_broken[key] = torch.where(broke, torch.minimum(best, flips), best)
    run.results.append(row)
    # one line per finished stage (`robust-snn -v attack`): the only sign of progress in a long --json run
    from_journal = "" if run.journal is None else f", {run.journal.reused - reused_before} of this process's chunks from the journal"
    log.info("%s at eps %g: %d attacked, %d broken, robust accuracy %.2f%% (%.0f s%s)", job.label, e, row["attacked"],
             row["broken"], 100 * row["robust_accuracy"], seconds, from_journal)
    robust_masks[key] = cumulative
    if detector is not None:
        rm = run.rejection_masks
        rm[key] = defended_mask if key not in rm else (rm[key] & defended_mask)
    if e == 0.0 and (spec.norm == "Linf" or job.norm in EVENT_THREATS) and run.eps_zero_acc is None and active is None:
        run.eps_zero_acc = row["robust_accuracy"]
    if run.keep_examples:
        run.examples[name] = x_adv
        run.example_predictions[name] = adv_logits.argmax(1)


def _eps_zero_probe(run: _Run, *, batch_size: int) -> None:
    """eps = 0 was not in the grid: attack up to 100 samples at eps = 0 with the first budgeted attack.

    At most 10 steps, on every rank, no sharding; the "eps=0 reproduces clean accuracy" check compares it.
    """
    budgeted = [j for j in run.jobs if not j.spec.minimum_norm and j.spec.norm == "Linf"]
    if not budgeted:
        return
    j0 = budgeted[0]
    m = min(run.n, batch_size, 100)
    p0 = {**j0.params, "steps": min(10, int(j0.params["steps"]))} if "steps" in j0.params else j0.params
    _, z_logits = _attack_all(j0.spec, p0, 0.0, run.x[:m], run.y[:m], run.clean_logits[:m], grads=j0.grads[:1], restarts=1,
                              chunks=Chunks(m, batch_size), progress=False, active=None, **run.common())
    run.eps_zero_acc = fraction(z_logits.argmax(1) == run.y[:m])
    run.eps_zero_ref = fraction(run.clean_correct[:m])


def _summary(run: _Run, check_list: List[Dict[str, Any]], *, surrogate: Optional[str], suite: Optional[Suite],
             stages: Optional[List[str]]) -> EvaluationResult:
    """The result of ``run``: a pure function of what the jobs found (per-sample worst case, settings, checks)."""
    n, results = run.n, run.results
    worst_case = [
        {"norm": norm, "eps": e, "robust_accuracy": fraction(mask), **with_interval(int(mask.sum()), n),
         "attacks": list(dict.fromkeys(r["attack"] for r in results if r["norm"] == norm and r["eps"] == e))}
        for (norm, e), mask in sorted(run.robust_masks.items(), key=lambda kv: (kv[0][0] != "Linf", kv[0][0], kv[0][1]))
    ]
    for w in worst_case:
        l0 = run.l0_broken.get((w["norm"], w["eps"]))
        if l0 is not None and bool(torch.isfinite(l0).any()):  # flipped events of the smallest example that broke each sample
            w.update(l0_stats(l0))
        if (w["norm"], w["eps"]) in run.rejection_masks:
            w["robust_accuracy_with_rejection"] = fraction(run.rejection_masks[(w["norm"], w["eps"])])
    out: Dict[str, Any] = {
        "n": n,
        "clean_accuracy": run.clean_acc,
        "clean_interval": with_interval(int(run.clean_correct.sum()), n),
        "clean_seconds": run.clean_seconds,
        "stochastic": run.stochastic,
        "eot_samples": run.eot,
        "eval_samples": run.n_eval,
        "surrogate": surrogate or "model",
        "suite": suite.name if suite is not None else None,
        "robustness_claim": suite.claim if suite is not None else None,
        "stages": stages,
        "results": results,
        "worst_case": worst_case,
        "checks": check_list,
        "clean_predictions": run.clean_logits.argmax(1),
        "clean_logits": run.clean_logits,
        "worst_case_masks": {result_key(norm, e): mask for (norm, e), mask in run.robust_masks.items()},
        "worst_case_defended_masks": {result_key(norm, e): mask for (norm, e), mask in run.rejection_masks.items()},
        # event budgets: per sample, the flipped events of the smallest example that broke it (inf: none did)
        "worst_case_l0": {result_key(norm, e): l0 for (norm, e), l0 in run.l0_broken.items()},
        "adaptive": run.source_model is None,
        # how the graphs served the attacks: captured shapes, replays, calls that ran the model itself
        "graphs": None if run.graphs is None else {
            "backend": run.graphs, **{k: sum(w.stats[k] for w in run.graph_wrappers) for k in ("captures", "replays", "eager", "failed")}},
    }
    detector = run.detector
    if detector is not None:
        out["detector"] = {"spec": detector.spec(), "threshold": float(detector.threshold), "fpr_target": detector.fpr,
                           "clean_rejection_rate": fraction(run.clean_rejected),
                           "clean_accuracy_with_rejection": fraction(run.clean_correct & ~run.clean_rejected)}
        if run.keep_examples:
            out["detector_scores"] = run.examples_scores
            out["example_rejected"] = run.examples_rejected
    if run.keep_examples:
        out["examples"] = run.examples
        out["example_predictions"] = run.example_predictions
    return EvaluationResult(out)


def _jobs(specs: List[AttackSpec], suite: Optional[Suite], *, eps: List[float], eps_l2: List[float], grads: List[Optional[str]],
          eps_l0: Sequence[float] = (),
          surrogate: Optional[str], steps: Optional[int], queries: Optional[int], seed: int,
          overrides: Sequence[Dict[str, Any]] = (), event_threat: str = "L0") -> List[_Job]:
    """The attack jobs in run order: per attack (or suite stage), per budget.

    Gradient-free attacks run once, whatever the gradient choices. ``overrides`` (one per
    attack) are hyperparameters from ``name:key=value`` specs; they win over ``steps``/``queries``.
    Event attacks run under ``event_threat`` (``add-only``: built with ``add_only = True``).
    """
    jobs: List[_Job] = []
    budgets = {"Linf": eps, "L2": eps_l2, "L0": list(eps_l0)}
    add_only = event_threat == "add-only"

    def under_threat(sp: AttackSpec, params: Dict[str, Any], own: Dict[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
        if sp.norm != "L0" or not add_only:
            return params, None
        if own.get("add_only") is False:
            raise RobustSNNError(f"{sp.name}:add_only=false contradicts the add-only threat model; leave add_only out")
        return {**params, "add_only": True}, event_threat

    if suite is None:
        for i, sp in enumerate(specs):
            g = (None,) if sp.gradient_free else tuple(grads)
            label = "model" if sp.gradient_free else (surrogate or "model")
            own = overrides[i] if i < len(overrides) else {}
            params, threat_name = under_threat(sp, {**attack_params(sp, steps=steps, queries=queries, seed=seed), **own}, own)
            name = sp.name + (":" + ",".join(f"{k}={_spec_value(v)}" for k, v in own.items()) if own else "")
            jobs += [_Job(sp, e, g, params, name, label, False, threat_name) for e in budgets[sp.norm]]
        return jobs
    seen = set()
    for st, sp in zip(suite.stages, specs):
        params = attack_params(sp, steps=st.steps if steps is None else steps, queries=st.queries if queries is None else queries,
                               seed=seed if st.seed is None else seed + st.seed)
        if st.targets is not None:
            params["targets"] = st.targets
        params, threat_name = under_threat(sp, params, {})
        if sp.gradient_free:
            g, label, name = (None,), "model", st.label
        elif st.gradient is not None:
            g, label, name = (canonical(st.gradient),), st.gradient, st.label
        else:  # the stage uses the model's own gradient, or the user's --surrogate
            g, label = tuple(grads), surrogate or "model"
            name = st.label if surrogate is None else f"{st.attack}[{label}]"
        key = (sp.name, g, tuple(sorted(params.items())))
        if key in seen:  # e.g. --surrogate equal to another stage's gradient: the same attack again finds nothing new
            continue
        seen.add(key)
        first = not jobs
        jobs += [_Job(sp, e, g, params, name, label, suite.cascade, threat_name) for e in budgets[sp.norm]
                 if first or e > 0 or not suite.cascade]  # a zero budget breaks nothing: at eps 0 only the first stage runs
    return jobs


def _spec_value(v: Any) -> str:
    """A hyperparameter as written in a spec: ``2.5``, ``50``, ``false``."""
    return str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def _convergence(jobs: List[_Job], robust_masks: Dict[tuple, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 clean_logits: torch.Tensor, *, restarts: int, batch_size: int, **common: Any) -> Optional[Dict[str, Any]]:
    """Rerun the last gradient job (largest L∞ budget) with twice the steps on the survivors among the first 200 samples."""
    cands = [j for j in jobs if not j.spec.gradient_free and "steps" in j.params and j.spec.norm == "Linf" and j.eps > 0]
    if not cands:
        return None
    e_max = max(j.eps for j in cands)
    job = [j for j in cands if j.eps == e_max][-1]
    m = min(len(x), 200)
    survivors = robust_masks[(job.spec.norm, e_max)][:m].clone()
    params = {**job.params, "steps": 2 * int(job.params["steps"])}
    _, lg = _attack_all(job.spec, params, e_max, x[:m], y[:m], clean_logits[:m], grads=job.grads, restarts=restarts,
                        chunks=Chunks(m, batch_size), progress=False, active=survivors, **common)
    broken = int((survivors & (lg.argmax(1) != y[:m])).sum())
    return {"attack": job.label, "eps": e_max, "steps": params["steps"], "n": m, "survivors": int(survivors.sum()), "broken": broken}


#: chunk ``c`` of an evaluation reseeds its RNGs with ``seed + CHUNK_SEED_STRIDE * c``
CHUNK_SEED_STRIDE = 1_000_003


def _detector_scores(model: torch.nn.Module, x: torch.Tensor, chunks: "Chunks", reseed) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return chunks.gather(chunks.map(lambda a, b: model.score(x[a:b].to(device)).float().cpu(), reseed))


def _auroc(neg: torch.Tensor, pos: torch.Tensor) -> float:
    """Area under the ROC curve of scores (positives should score higher); ties count half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    ranks = rankdata(torch.cat([neg, pos]).double().numpy())
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def _attack_all(spec: AttackSpec, params: Dict[str, Any], e: float, x, y, clean_logits, *, model, attacked, judge,
                grads, restarts, chunks: Chunks, reseed, n_classes, eot, device, progress, active=None,
                threat_name: Optional[str] = None, found_l0: Optional[torch.Tensor] = None,
                journal: Optional[Journal] = None) -> tuple:
    """Adversarial examples for this rank's chunks of x (clean-misclassified inputs are left as they are).

    ``active``: attack only these samples (a cascade's survivors); the others keep ``x``.
    ``threat_name``: the threat model a minimum-norm event attack's examples must lie in
    (default: the spec's own). ``found_l0`` (``[n]``, inf): updated in place with the smallest
    L0 a minimum-L0 attack found per sample (its ``last_l0``), also beyond the budget.
    ``journal``: load each chunk's results from it when recorded, record them when computed.

    Each chunk runs every surrogate and restart on its own still-robust samples, after
    reseeding for that chunk. Rows of other ranks' chunks keep ``x`` and the clean logits.
    """
    x_adv = x.clone()
    adv_logits = clean_logits.clone()
    best_margin = margins(clean_logits, y)
    ok = best_margin.isfinite() & (clean_logits.argmax(1) == y)
    if active is not None:
        ok &= active
    if not bool((ok & chunks.owned).any()) or (e == 0.0 and spec.minimum_norm):  # no budget: a minimum-norm attack cannot succeed
        return x_adv, adv_logits
    target = GradGuard(model if spec.uses_own_eot else attacked).eval()
    atk = build_attack(spec, target, e, params, n_classes=n_classes, eot_samples=eot)
    judged = getattr(judge, "model", model)
    judged = judged.model if isinstance(judged, GraphedClassifier) else judged  # the replay judges the same model
    if hasattr(atk, "early_exit") and (judged is not model or is_stochastic(model)):
        # transfer: a first success on the source model transfers worse than the full run; a stochastic
        # model (even with --eot-samples 1): one noisy misclassification is not final
        atk.early_exit = False
    base_seed = getattr(atk, "seed", None)  # attacks that reseed themselves on every call (APGD, Square)
    for c, (a, b) in progress_bar(chunks.mine(), enabled=progress, desc=f"{spec.name} eps={e:g}"):
        todo = a + torch.nonzero(ok[a:b]).squeeze(1)
        if len(todo) == 0:
            continue
        key = None
        if journal is not None:  # everything that decides this chunk's results, beyond the run's own fingerprint
            # the clean logits too: whatever changed the model and escaped the run's fingerprint changes them
            key = journal.chunk_key(spec.name, params, e, grads, restarts, threat_name, found_l0 is not None, c, a, b, ok[a:b],
                                    x[a:b], y[a:b], clean_logits[a:b])
            # only the attacked rows: the others keep x and the clean logits (a later stage's few survivors: small entries)
            like = {"x_adv": x_adv[todo], "logits": adv_logits[todo], "margin": best_margin[todo],
                    **({} if found_l0 is None else {"found_l0": found_l0[todo]})}
            entry = journal.load(key, like, same={"rows": todo - a})
            if entry is not None:
                x_adv[todo], adv_logits[todo], best_margin[todo] = entry["x_adv"], entry["logits"], entry["margin"]
                if found_l0 is not None:
                    found_l0[todo] = entry["found_l0"]
                continue
        reseed(c)
        for g in grads:
            with use_surrogate(model, g):
                for r in range(restarts):
                    idx = todo[(adv_logits[todo].argmax(1) == y[todo])]
                    if len(idx) == 0:
                        break
                    if isinstance(base_seed, int):  # otherwise every restart would repeat the same run
                        atk.seed = base_seed + r
                    xb, yb = x[idx].to(device), y[idx].to(device)
                    adv = atk(xb, yb).detach()
                    model.eval()  # torchattacks restores the wrapper's mode; judge in eval mode
                    if target.nonfinite or not bool(torch.isfinite(adv).all()):
                        raise RobustSNNError(
                            f"{spec.name} met non-finite input gradients through the gradient {g or 'of the model'} (NaN or "
                            "inf): its examples are meaningless; choose another --surrogate (or check the model's weights)")
                    last = getattr(atk, "last_l0", None)
                    if found_l0 is not None and isinstance(last, torch.Tensor) and len(last) == len(idx):
                        last = last.float().cpu()
                        # 0: the attacked model (a transfer source) already misclassifies it: nothing was found
                        found_l0[idx] = torch.minimum(found_l0[idx], torch.where(last > 0, last, torch.inf))
                    if spec.minimum_norm:  # outside the budget: the attack failed
                        if spec.norm in ("Linf", "L2"):
                            too_far = (adv - xb).flatten(1).norm(dim=1) > e
                        else:  # events: flipped entries (add-only: inf where an event was removed)
                            too_far = THREAT_MODELS[threat_name or spec.norm].distance(adv, xb) > e
                        adv[too_far] = xb[too_far]
                    with torch.no_grad():
                        lg = judge(adv).float().cpu()
                    m = margins(lg, y[idx])
                    better = (lg.argmax(1) != y[idx]) | (m < best_margin[idx])
                    better &= ~(adv_logits[idx].argmax(1) != y[idx])  # keep an earlier success
                    sel = idx[better]
                    x_adv[sel] = adv.cpu()[better]
                    adv_logits[sel] = lg[better]
                    best_margin[sel] = m[better]
        if key is not None:
            journal.save(key, rows=todo - a, x_adv=x_adv[todo], logits=adv_logits[todo], margin=best_margin[todo],
                         **({} if found_l0 is None else {"found_l0": found_l0[todo]}))
    return x_adv, adv_logits
