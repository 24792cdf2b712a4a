"""Training loop for spiking classifiers (surrogate-gradient BPTT), resumable."""
from __future__ import annotations

import contextlib
import csv
import gc
import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import distributed
from .attacks.evaluate import evaluate
from .checkpoint import load_file, save_checkpoint
from .defenses.adversarial import craft, mart_loss, parse_gradients, trades_loss, validate_adv, warmup_eps
from .data import data_source, dataset_info, load_split, split_validation
from .errors import RobustSNNError
from .evaluation import evaluate_clean
from .models import SpikingClassifier, full_config, unchecked_inputs
from .utils import atomic_path, ensure_writable_dir, progress_bar, resolve_device, save_figure_atomic, seed_everything, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")
#: ce: cross-entropy on output spike counts (snnTorch's ce_count_loss); count: the N-MNIST seed's name for the same loss;
#: mse: spike counts regressed on 80 % / 20 % of T (snnTorch's mse_count_loss)
LOSSES = ("ce", "mse", "count")
LR_SCALINGS = ("none", "linear", "sqrt")
#: which epoch's weights an adversarially trained checkpoint keeps: the best by validated robust accuracy, or the last
KEEP = ("best", "last")


@dataclass
class TrainSettings:
    """Hyperparameters of one training run (stored in the checkpoint recipe)."""

    dataset: str = "mnist"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    loss: str = "ce"
    seed: int = 0
    val_split: float = 0.05
    limit: Optional[int] = None
    test_limit: Optional[int] = None
    augment_shift: int = 0
    adv: str = "none"
    adv_eps: float = 0.3
    adv_steps: int = 7
    adv_alpha: Optional[float] = None
    adv_warmup: int = 0
    trades_beta: float = 6.0
    noise_sigma: float = 0.0
    lr_scaling: str = "none"
    adv_attack: str = "pgd"
    adv_gradients: Optional[str] = None
    val_attack_samples: int = 500
    val_attack_steps: int = 50
    keep: str = "best"

    def validate(self) -> None:
        if self.epochs < 1:
            raise RobustSNNError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise RobustSNNError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise RobustSNNError(f"--lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise RobustSNNError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.val_split < 1:
            raise RobustSNNError(f"--val-split must be in [0, 1), got {self.val_split}")
        for opt, value in (("--limit", self.limit), ("--test-limit", self.test_limit)):
            if value is not None and value < 1:
                raise RobustSNNError(f"{opt} must be >= 1 (leave it out to use the whole split), got {value}")
        if self.seed < 0:
            raise RobustSNNError(f"--seed must be >= 0, got {self.seed}")
        if self.optimizer not in OPTIMIZERS:
            raise RobustSNNError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise RobustSNNError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if not 0 <= self.augment_shift <= 8:
            raise RobustSNNError(f"--augment-shift must be in [0, 8] pixels, got {self.augment_shift}")
        if self.lr_scaling not in LR_SCALINGS:
            raise RobustSNNError(f"unknown --lr-scaling {self.lr_scaling!r}; choose one of: {', '.join(LR_SCALINGS)}")
        if self.loss not in LOSSES:
            raise RobustSNNError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")
        validate_adv(self.adv, self.adv_eps, self.adv_steps, self.adv_alpha, self.trades_beta, attack=self.adv_attack,
                     gradients=self.adv_gradients)
        if self.adv == "none":
            for opt, bad in (("--adv-attack", self.adv_attack != "pgd"), ("--adv-gradients", self.adv_gradients is not None)):
                if bad:
                    raise RobustSNNError(f"{opt} applies to adversarial training; add --adv pgd, trades or mart")
        if self.val_attack_samples < 1:
            raise RobustSNNError(f"--val-attack-samples must be >= 1, got {self.val_attack_samples}")
        if self.val_attack_steps < 1:
            raise RobustSNNError(f"--val-attack-steps must be >= 1, got {self.val_attack_steps}")
        if self.keep not in KEEP:
            raise RobustSNNError(f"unknown --keep {self.keep!r}; choose one of: {', '.join(KEEP)}")
        if self.adv_warmup < 0 or self.adv_warmup > self.epochs:
            raise RobustSNNError(f"--adv-warmup must be between 0 and --epochs ({self.epochs}), got {self.adv_warmup}")
        if not 0 <= self.noise_sigma <= 1:
            raise RobustSNNError(f"--noise-sigma must be in [0, 1], got {self.noise_sigma}")
        if self.adv in ("trades", "mart") and self.loss not in ("ce", "count"):
            raise RobustSNNError(f"--adv {self.adv} needs --loss ce")


def spike_loss(logits: torch.Tensor, y: torch.Tensor, *, kind: str, num_steps: int) -> torch.Tensor:
    """Cross-entropy on spike counts (``ce``, or ``count``, the N-MNIST seed's name for it), or MSE between counts and target counts.

    The MSE target is 80 % of ``num_steps`` spikes for the true class and 20 %
    for the others (snnTorch's ``mse_count_loss``).
    """
    if kind in ("ce", "count"):
        return F.cross_entropy(logits, y)
    target = torch.full_like(logits, 0.2 * num_steps)
    target.scatter_(1, y.unsqueeze(1), 0.8 * num_steps)
    return F.mse_loss(logits, target)


def random_shift(x: torch.Tensor, max_shift: int, *, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random integer offset in [-max_shift, max_shift] (zero fill).

    Shape: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """
    if max_shift == 0:
        return x
    b, c, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m))
    sy = torch.randint(0, 2 * m + 1, (b,), generator=generator)
    sx = torch.randint(0, 2 * m + 1, (b,), generator=generator)
    rows = (sy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (sx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def effective_lr(s: TrainSettings, world: int) -> float:
    """``--lr`` scaled for ``world`` data-parallel processes (effective batch ``world * batch_size``).

    ``none`` keeps it (a fine default for Adam), ``linear`` multiplies by ``world``
    (Goyal et al. 2017, https://arxiv.org/abs/1706.02677, for SGD), ``sqrt`` by ``sqrt(world)``.
    """
    if s.lr_scaling == "linear":
        return s.lr * world
    if s.lr_scaling == "sqrt":
        return s.lr * math.sqrt(world)
    return s.lr


def _make_optimizer(model: torch.nn.Module, s: TrainSettings, lr: float) -> torch.optim.Optimizer:
    params = model.parameters()
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=s.weight_decay, nesterov=True)


def shard_epoch(perm: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of an epoch's permutation, as ``DistributedSampler`` deals it.

    The permutation is padded by wrapping around to a multiple of ``world`` and rank
    ``r`` takes every ``world``-th index from ``r``, so all ranks run the same number of
    steps. With one process it is ``perm`` itself.
    """
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(len(perm)), num_replicas=world, rank=rank, shuffle=False, drop_last=False)
    return perm[torch.tensor(list(iter(sampler)), dtype=torch.long)]


def _make_scheduler(opt: torch.optim.Optimizer, s: TrainSettings, steps_per_epoch: int):
    if s.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, s.epochs * steps_per_epoch))
    if s.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, (s.epochs * steps_per_epoch) // 3), gamma=0.1)
    return None


def state_path(out: Path) -> Path:
    """Sidecar file holding optimizer state for ``--resume``."""
    return out.with_name(out.stem + ".state.pt")


def log_paths(out: Path) -> List[Path]:
    """The files written beside a checkpoint: ``NAME.log.json``, ``NAME.log.csv``, ``NAME.curves.png``."""
    base = out.with_suffix("")
    return [base.with_name(base.name + suffix) for suffix in (".log.json", ".log.csv", ".curves.png")]


def _output_problem(out: Path, *, resume: bool, force: bool) -> Optional[str]:
    """Why ``train`` must not start writing ``out`` (unwritable, or it would overwrite something), or ``None``."""
    try:
        ensure_writable_dir(out.parent, option="--out")
    except RobustSNNError as e:
        return str(e)
    if out.is_dir():
        return f"--out {out} is a folder; give a checkpoint file path ending in .pt"
    sp = state_path(out)
    if force or (resume and sp.is_file()):
        return None
    if sp.is_file():
        return (f"{sp} holds an interrupted run of --out {out}; pass --resume to continue it, "
                f"or --force to start over")
    existing = [p for p in (out, *log_paths(out)) if p.exists()]
    if existing:
        finished = " (its run finished: there is nothing to resume)" if resume else ""
        return f"--out {existing[0]} already exists{finished}; pass --force to overwrite it, or choose another --out"
    return None


_STATE_KEYS = ("config", "settings")  # the rest is checked after the settings match


def _read_state(sp: Path) -> Dict[str, Any] | str:
    """A training state file, or a one-line reason why it cannot be resumed."""
    try:
        state = load_file(sp, what="training state", fix="delete it and rerun without --resume to start over")
    except RobustSNNError as e:
        return f"--resume: {e}"
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        return f"--resume: {sp} is not a robust-snn training state; delete it and rerun without --resume to start over"
    return state


def train(
    model_config: Dict[str, Any],
    settings: TrainSettings,
    *,
    out: str | Path,
    data_dir: Optional[str] = None,
    device: str = "auto",
    resume: bool = False,
    force: bool = False,
    command: Optional[str] = None,
    progress: bool = True,
) -> Tuple[SpikingClassifier, Dict[str, Any]]:
    """Train a model and write ``out`` (checkpoint), ``*.log.json``, ``*.log.csv`` and ``*.curves.png``.

    Args:
        model_config: model config overrides (see :func:`robust_snn.models.full_config`);
            input shape, classes and normalization come from the dataset.
        settings: hyperparameters.
        out: checkpoint path.
        data_dir: torchvision-layout data root.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        resume: continue from ``out``'s ``.state.pt`` sidecar if present.
        force: overwrite an existing ``out`` (and its logs), or start over from an interrupted
            run's state; without it, both are refused before any work starts.
        command: the command line, recorded in the checkpoint recipe.

    Under ``torchrun`` (see :mod:`robust_snn.distributed`) the model is wrapped in
    ``DistributedDataParallel``; each epoch's permutation is dealt to the ranks as
    ``DistributedSampler`` does, each rank runs ``batch_size`` images per step (effective
    batch ``world * batch_size``, learning rate per ``settings.lr_scaling``), validation is
    sharded and summed, and only rank 0 writes the checkpoint, the training state and
    the logs. Every rank returns the same metrics.

    Returns:
        ``(model, metrics)``.
    """
    settings.validate()
    out = Path(out)
    if out.suffix != ".pt":
        raise RobustSNNError(f"--out must end in .pt, got {out}")
    dd = distributed.init(device)
    # rank 0 owns the outputs: it checks them before any work and every rank stops on its verdict
    problem = distributed.broadcast_object(_output_problem(out, resume=resume, force=force) if dd.is_main else None)
    if problem:
        raise RobustSNNError(problem)
    dev = resolve_device(distributed.device_for(device))
    info = dataset_info(settings.dataset)
    cfg = full_config(
        **{
            **model_config,
            "dataset": info.name,
            "in_channels": info.in_channels,
            "image_size": list(info.image_size),
            "num_classes": len(info.classes),
            "classes": list(info.classes),
            "mean": list(info.mean),
            "std": list(info.std),
            "input": info.input,
        }
    )
    if info.input == "events":
        for opt, bad in (("--augment-shift", settings.augment_shift), ("--noise-sigma", settings.noise_sigma),
                         ("--adv", settings.adv != "none"), ("--encoding", cfg["encoding"] != "direct")):
            if bad:
                raise RobustSNNError(f"{opt} applies to image datasets; {settings.dataset} gives ready event frames")
    if cfg["readout"] == "membrane" and settings.loss == "mse":
        raise RobustSNNError("--loss mse regresses output spike counts on 80 % / 20 % of T, not membrane potentials; "
                             "with --readout membrane use --loss ce")
    x_all, y_all = load_split(settings.dataset, "train", data_dir=data_dir, limit=settings.limit, num_steps=cfg["num_steps"])
    (x_tr, y_tr), val = split_validation(x_all, y_all, settings.val_split, seed=settings.seed)
    if len(x_tr) == 0:
        raise RobustSNNError("no training images left after the validation split; lower --val-split or raise --limit")

    seed_everything(settings.seed)
    model = SpikingClassifier(cfg).to(dev)
    lr = effective_lr(settings, dd.world)
    opt = _make_optimizer(model, settings, lr)
    steps_per_epoch = math.ceil(math.ceil(len(x_tr) / dd.world) / settings.batch_size)
    run = _Loop(model=model, net=model, opt=opt, sched=_make_scheduler(opt, settings, steps_per_epoch), settings=settings,
                cfg=cfg, dev=dev, dd=dd, lr=lr, steps_per_epoch=steps_per_epoch, x_tr=x_tr, y_tr=y_tr, val=val, out=out,
                sp=state_path(out))
    start_epoch = _resume(run) if resume else 1
    # every invocation that trained some of the epochs: a run resumed on another device, or with another command,
    # keeps the earlier ones (the recipe's "command" and "device" are the last invocation's)
    if start_epoch <= settings.epochs:  # (a rerun after the last epoch only tests and writes the checkpoint)
        run.invocations.append({"command": command, "device": str(dev), "world_size": dd.world,
                                "torch_threads": torch.get_num_threads(), "first_epoch": start_epoch})
    if settings.adv != "none" and settings.keep == "best" and val is None:
        log.warning("--keep best chooses the epoch by the validation suite, which needs held-out images "
                    "(--val-split > 0); keeping the last epoch")
    if dd.enabled:
        from torch.nn.parallel import DistributedDataParallel

        run.net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        log.info("DistributedDataParallel over %d processes: %d images per step in all, lr %g",
                 dd.world, dd.world * settings.batch_size, lr)
    for epoch in range(start_epoch, settings.epochs + 1):
        row = _train_epoch(run, epoch, progress=progress)
        run.train_seconds += row["seconds"]
        if val is not None:
            row.update(_validate(run))
            _track_best(run, row)
        run.history.append(row)
        _log_epoch(run, row)
        if dd.is_main:
            _write_logs(out, run.history)
            _save_state(run, epoch)
    if run.net is not model:
        # Tear DistributedDataParallel down now, while the process group is alive: left to the garbage collector
        # it may be destroyed at interpreter exit, after destroy_process_group, and gloo aborts the process
        # ("terminate called without an active exception", pytorch#190489).
        run.net = model
        gc.collect()
    return _finish(run, data_dir=data_dir, command=command, progress=progress)


@dataclass
class _Loop:
    """One training run's objects and progress."""

    model: SpikingClassifier
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: Any
    settings: TrainSettings
    cfg: Dict[str, Any]
    dev: torch.device
    dd: Any
    lr: float
    steps_per_epoch: int
    x_tr: torch.Tensor
    y_tr: torch.Tensor
    val: Optional[Tuple[torch.Tensor, torch.Tensor]]
    out: Path
    sp: Path
    history: List[Dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    #: the kept epoch so far (``--keep best``): ``{"epoch", "score", "model"}`` or ``None``
    best: Optional[Dict[str, Any]] = None
    #: one record per invocation of :func:`train` on this run: command, device, processes, threads, first epoch
    invocations: List[Dict[str, Any]] = field(default_factory=list)


def _resume(run: _Loop) -> int:
    """Load the interrupted run's state into ``run`` (rank 0 reads, every rank gets it); returns the first epoch to run."""
    sp, dd, settings = run.sp, run.dd, run.settings
    # rank 0 reads the state and hands it to the others (no shared filesystem needed)
    state = distributed.broadcast_object(_read_state(sp) if dd.is_main and sp.is_file() else None)
    if isinstance(state, str):
        raise RobustSNNError(state)
    if state is None:
        log.warning("--resume: no training state at %s; starting from scratch", sp)
        return 1
    saved_settings = {**asdict(TrainSettings()), **dict(state.get("settings") or {})}  # keys added later: defaults
    if state.get("config") != run.cfg or saved_settings != asdict(settings):
        raise RobustSNNError(f"{sp} was written by a run with other settings; rerun without --resume or with the same options")
    if int(state.get("world_size", 1)) != dd.world:
        # the learning rate, the schedule's length and the adversarial warm-up depend on the steps per epoch
        raise RobustSNNError(f"{sp} was written by a run with {int(state.get('world_size', 1))} process(es); "
                             f"resume it with the same number (this run has {dd.world})")
    try:
        run.model.load_state_dict(state["model"])
        run.opt.load_state_dict(state["optimizer"])
        if run.sched is not None and state.get("scheduler") is not None:
            run.sched.load_state_dict(state["scheduler"])
        run.history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        run.train_seconds = float(state.get("train_seconds", 0.0))
        run.best = _checked_best(state.get("best"), run.model)
        # a state written before invocations were recorded: its epochs came from invocations unknown
        run.invocations = [dict(r) for r in state.get("invocations") or [
            {"command": None, "device": None, "world_size": int(state.get("world_size", 1)), "torch_threads": None,
             "first_epoch": 1}]]
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError):
        raise RobustSNNError(f"--resume: {sp} is damaged (its weights or optimizer state do not fit this model); "
                             f"delete it and rerun without --resume to start over") from None
    log.info("resuming from %s after epoch %d", sp, start_epoch - 1)
    return start_epoch


def _checked_best(best: Any, model: SpikingClassifier) -> Optional[Dict[str, Any]]:
    """The ``best`` record of a training state, checked against ``model`` (``ValueError`` when it does not fit)."""
    if best is None:
        return None
    if not isinstance(best, dict) or not {"epoch", "score", "model"} <= set(best):
        raise ValueError("malformed best-epoch record")
    want = {k: v.shape for k, v in model.state_dict().items()}
    if {k: getattr(v, "shape", None) for k, v in best["model"].items()} != want:
        raise ValueError("best-epoch weights do not fit the model")
    return {"epoch": int(best["epoch"]), "score": [float(v) for v in best["score"]], "model": best["model"]}


def _batch_loss(run: _Loop, xb: torch.Tensor, yb: torch.Tensor, *, epoch: int, i: int, gradient: Optional[str] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits, loss)`` of one batch: plain, or on examples crafted against the current model (PGD-AT, FGSM-RS, TRADES,
    MART) through ``gradient`` (``None``: the model's own surrogate)."""
    s, net, model = run.settings, run.net, run.model
    if s.adv == "none":
        logits = net(xb)
        return logits, spike_loss(logits, yb, kind=s.loss, num_steps=model.num_steps)
    e = warmup_eps(s.adv_eps, step=(epoch - 1) * run.steps_per_epoch + i, warmup_steps=s.adv_warmup * run.steps_per_epoch)
    alpha = None if s.adv_alpha is None else s.adv_alpha * e / s.adv_eps
    x_adv = craft(model, xb.clamp(0, 1), yb, method=s.adv, eps=e, steps=s.adv_steps, alpha=alpha, attack=s.adv_attack,
                  gradient=gradient)
    if s.adv in ("trades", "mart"):
        logits_clean = net(xb)
        logits = net(x_adv)
        objective = trades_loss if s.adv == "trades" else mart_loss
        return logits, objective(logits_clean, logits, yb, beta=s.trades_beta)
    logits = net(x_adv)
    return logits, spike_loss(logits, yb, kind=s.loss, num_steps=model.num_steps)


def _train_epoch(run: _Loop, epoch: int, *, progress: bool) -> Dict[str, Any]:
    """One epoch over this rank's share of the training set; returns the epoch's log row (training part)."""
    s, dd, dev = run.settings, run.dd, run.dev
    # dropout, noise, random starts, augmentation: resumable and deterministic; other ranks draw their own
    epoch_seed = s.seed * 1000 + epoch
    rank_seed = epoch_seed + RANK_SEED_STRIDE * dd.rank
    torch.manual_seed(rank_seed)
    encoder = run.model.encoder
    if hasattr(encoder, "reseed"):  # a stochastic encoder's own stream: per epoch, so validation (which reseeds it) and
        encoder.reseed(rank_seed)  # --resume leave training's spike draws as an uninterrupted run has them
    gen = torch.Generator().manual_seed(epoch_seed)
    order = shard_epoch(torch.randperm(len(run.x_tr), generator=gen), dd.rank, dd.world)  # same permutation on every rank
    if dd.rank > 0:
        gen = torch.Generator().manual_seed(rank_seed)
    # the crafting gradient of each batch, drawn from the family (its own stream: shifts and starts stay as without one)
    family = parse_gradients(s.adv_gradients, own=run.cfg["surrogate"])
    grad_gen = torch.Generator().manual_seed(rank_seed + GRADIENT_SEED_OFFSET)
    run.net.train()
    tot_loss = tot_correct = tot_n = 0.0
    t0 = time.perf_counter()
    bar = progress_bar(list(order.split(s.batch_size)), enabled=progress and dd.is_main, desc=f"epoch {epoch}/{s.epochs}")
    # Gaussian noise augmentation leaves [0, 1] on purpose (Cohen et al. do not clip)
    noisy = unchecked_inputs(run.model) if s.noise_sigma > 0 else contextlib.nullcontext()
    with noisy:
        for i, idx in enumerate(bar):
            xb = random_shift(run.x_tr[idx], s.augment_shift, generator=gen)
            xb, yb = xb.to(dev), run.y_tr[idx].to(dev)
            if s.noise_sigma > 0:  # Gaussian augmentation for randomized smoothing (Cohen et al. 2019)
                xb = xb + s.noise_sigma * torch.randn_like(xb)
            gradient = family[int(torch.randint(len(family), (1,), generator=grad_gen))] if len(family) > 1 else family[0]
            logits, loss = _batch_loss(run, xb, yb, epoch=epoch, i=i, gradient=gradient)
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.opt.step()
            if run.sched is not None:
                run.sched.step()
            tot_loss += loss.item() * len(yb)
            tot_correct += (logits.argmax(1) == yb).sum().item()
            tot_n += len(yb)
            bar.set_postfix(loss=f"{tot_loss / tot_n:.4f}", acc=f"{100 * tot_correct / tot_n:.2f}%")
    epoch_seconds = distributed.max_float(time.perf_counter() - t0)
    tot_loss, tot_correct, tot_n = distributed.sum_floats([tot_loss, tot_correct, tot_n])
    return {
        "epoch": epoch,
        "train_loss": tot_loss / tot_n,
        "train_accuracy": tot_correct / tot_n,
        "val_loss": None,
        "val_accuracy": None,
        "val_robust_accuracy": None,
        "lr": run.opt.param_groups[0]["lr"],
        "seconds": epoch_seconds,
        "img_per_s": tot_n / epoch_seconds,
        "device": str(dev),  # a resumed run may go on elsewhere: each epoch's speed with the device that made it
    }


def _validate(run: _Loop) -> Dict[str, Any]:
    """Loss and accuracy on the held-out split (sharded over ranks), and for adversarial training the robust accuracy
    under the ``validation`` suite (the standard suite's first stages) on up to ``val_attack_samples`` of its images."""
    model, val, dd, dev, s = run.model, run.val, run.dd, run.dev, run.settings
    model.eval()
    mine = torch.arange(dd.rank, len(val[0]), dd.world)  # validation sharded over ranks, sums gathered
    with torch.inference_mode():
        vl = vc = 0.0
        for part in mine.split(500):
            lg = model(val[0][part].to(dev))
            vl += spike_loss(lg, val[1][part].to(dev), kind=s.loss, num_steps=model.num_steps).item() * len(part)
            vc += (lg.argmax(1).cpu() == val[1][part]).sum().item()
    vl, vc = distributed.sum_floats([vl, vc])
    row: Dict[str, Any] = {"val_loss": vl / len(val[0]), "val_accuracy": vc / len(val[0])}
    if s.adv != "none":
        row["val_robust_accuracy"] = _val_robust_accuracy(model, val, s, dev)
    return row


def _track_best(run: _Loop, row: Dict[str, Any]) -> None:
    """``--keep best``: remember this epoch's weights if its validated robust accuracy (then clean accuracy) is the best."""
    if run.settings.keep != "best" or row.get("val_robust_accuracy") is None:
        return
    score = [row["val_robust_accuracy"], row["val_accuracy"]]
    if run.best is None or score > run.best["score"]:
        run.best = {"epoch": row["epoch"], "score": score,
                    "model": {k: v.detach().clone() for k, v in run.model.state_dict().items()}}


def _log_epoch(run: _Loop, row: Dict[str, Any]) -> None:
    if abs(row["train_loss"] - math.log(run.cfg["num_classes"])) < 1e-3 and run.settings.loss == "ce":
        log.warning("epoch %d: the network is silent (uniform output, loss = ln K); lower --lr, or ramp the attack with "
                    "--adv-warmup for adversarial training", row["epoch"])
    log.info(
        "epoch %d: loss %.4f, train acc %.2f%%%s, %.0f img/s",
        row["epoch"], row["train_loss"], 100 * row["train_accuracy"],
        ("" if row["val_accuracy"] is None else f", val acc {100 * row['val_accuracy']:.2f}%")
        + ("" if row["val_robust_accuracy"] is None else
           f", val robust acc {100 * row['val_robust_accuracy']:.2f}% (validation suite)"),
        row["img_per_s"],
    )


def _save_state(run: _Loop, epoch: int) -> None:
    """Everything ``--resume`` needs after ``epoch``, written atomically."""
    state = {
        "config": run.cfg,
        "settings": asdict(run.settings),
        "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict() if run.sched is not None else None,
        "history": run.history,
        "epoch": epoch,
        "train_seconds": run.train_seconds,
        "world_size": run.dd.world,
        "best": run.best,
        "invocations": run.invocations,
    }
    with atomic_path(run.sp) as tmp:
        torch.save(state, tmp)


def _finish(run: _Loop, *, data_dir: Optional[str], command: Optional[str], progress: bool) -> Tuple[SpikingClassifier, Dict[str, Any]]:
    """Rank 0 tests the model and writes the checkpoint (the training state goes); every rank gets the metrics."""
    model, s, dd, history = run.model, run.settings, run.dd, run.history
    if run.best is not None:  # --keep best: the epoch with the best validated robust accuracy
        model.load_state_dict(run.best["model"])
        log.info("keeping epoch %d (validation-suite robust accuracy %.2f%%, the best of %d epochs)",
                 run.best["epoch"], 100 * run.best["score"][0], len(history))
    selected = run.best["epoch"] if run.best is not None else (history[-1]["epoch"] if history else None)
    kept_row = next((h for h in history if h["epoch"] == selected), {})  # the log row of the epoch the checkpoint holds
    model.eval()
    if not dd.is_main:  # rank 0 tests and writes the checkpoint; the others wait and get its metrics
        result = distributed.broadcast_object(None)
        return model, result
    x_te, y_te = load_split(s.dataset, "test", data_dir=data_dir, limit=s.test_limit, num_steps=model.num_steps)
    test = evaluate_clean(model, x_te, y_te, progress=progress)
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_n": test["n"],
        "test_split": "test",
        "test_data": data_source(s.dataset, "test", data_dir=data_dir),
        "val_accuracy": kept_row.get("val_accuracy"),
        "val_robust_accuracy": kept_row.get("val_robust_accuracy"),
        "selected_epoch": selected,
        "train_img_per_s": (sum(h["img_per_s"] for h in history) / len(history)) if history else None,
        "eval_img_per_s": test["img_per_s"],
        "firing_rates": test["firing_rates"],
    }
    recipe = {
        "command": command,
        **asdict(s),
        "device": str(run.dev),
        "torch_threads": torch.get_num_threads(),
        "world_size": dd.world,
        "effective_batch_size": dd.world * s.batch_size,
        "effective_lr": run.lr,
        "train_seconds": run.train_seconds,
        "epochs_run": len(history),
        "invocations": run.invocations,
    }
    save_checkpoint(run.out, model, metrics=metrics, recipe=recipe)
    run.sp.unlink(missing_ok=True)
    result = {**metrics, "history": history, "checkpoint": str(run.out), "train_seconds": run.train_seconds}
    return model, distributed.broadcast_object(result)


def evaluate_trained(out: str | Path, settings: TrainSettings, *, data_dir: Optional[str] = None, device: str = "auto",
                     progress: bool = True) -> Dict[str, Any]:
    """``train --test-only``: evaluate the finished checkpoint ``out`` on the test split, no training (the seed's ``--test_only``).

    The model comes from the checkpoint; ``settings.dataset`` must be the one it was trained on, and
    ``settings.test_limit`` limits the test images. Returns the metrics ``train`` reports for its test split.
    """
    from .checkpoint import load_model
    from .data import data_source

    out = Path(out)
    if not out.is_file():
        raise RobustSNNError(f"--test-only evaluates the checkpoint --out {out}, which does not exist; train it first")
    model = load_model(out, device=device)
    if model.config["dataset"] != settings.dataset:
        raise RobustSNNError(f"--test-only: {out} was trained on {model.config['dataset']}, not {settings.dataset}; "
                             f"pass --dataset {model.config['dataset']}")
    x, y = load_split(settings.dataset, "test", data_dir=data_dir, limit=settings.test_limit, num_steps=model.num_steps)
    test = evaluate_clean(model, x, y, progress=progress)
    return {"checkpoint": str(out), "test_accuracy": test["accuracy"], "test_n": test["n"], "test_split": "test",
            "data": data_source(settings.dataset, "test", data_dir=data_dir), "eval_img_per_s": test["img_per_s"],
            "firing_rates": test["firing_rates"]}


#: rank ``r`` > 0 offsets its training seeds by ``r * RANK_SEED_STRIDE`` (rank 0 draws what one process draws)
RANK_SEED_STRIDE = 7919
#: the per-batch draw of the crafting gradient uses its own generator, seeded ``rank seed + this``
GRADIENT_SEED_OFFSET = 104729


def _val_robust_accuracy(model: SpikingClassifier, val: Tuple[torch.Tensor, torch.Tensor], s: TrainSettings,
                         dev: torch.device) -> float:
    """Worst case of the ``validation`` suite (the standard suite's first APGD-CE stages, ``val_attack_steps`` steps)
    at ``adv_eps`` on the first ``val_attack_samples`` validation images (sharded over ranks by ``evaluate``)."""
    x, y = val[0][: s.val_attack_samples].to(dev), val[1][: s.val_attack_samples].to(dev)
    res = evaluate(model, x, y, suite="validation", eps=[s.adv_eps], steps=s.val_attack_steps, checks=False, seed=s.seed)
    return float(res["worst_case"][0]["robust_accuracy"])


def _write_logs(out: Path, history: List[Dict[str, Any]]) -> None:
    log_json, log_csv, curves = log_paths(out)
    write_json_atomic(log_json, history)
    buf = io.StringIO()
    # every key of every row: a run resumed from a state written by an older version has rows with other keys
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for h in history for k in h)), restval="")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(log_csv, buf.getvalue())
    from .plotting import training_curves_figure
    import matplotlib.pyplot as plt

    fig = training_curves_figure(history)
    save_figure_atomic(fig, curves, dpi=110)
    plt.close(fig)
