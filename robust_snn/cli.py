"""``robust-snn`` command line: thin wrappers over the library functions."""
from __future__ import annotations

import functools
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import click

from .errors import RobustSNNError

log = logging.getLogger("robust_snn")


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line and exit status 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RobustSNNError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            if kwargs.get("journal"):  # attack --journal: the finished batches are on disk
                click.echo(f"interrupted; the finished batches are kept in --journal {kwargs['journal']}: run the same "
                           "command again to continue", err=True)
            else:
                click.echo("interrupted; no partial results were written", err=True)
            sys.exit(130)

    return wrapper


def _number_list(value: Optional[str], name: str, cast: Callable[[str], Any] = float) -> Optional[List[Any]]:
    """Parse ``"1,2,3"``; ``None`` stays ``None``."""
    if value is None:
        return None
    kind = "integers" if cast is int else "numbers"
    try:
        items = [cast(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise RobustSNNError(f"{name} must be comma-separated {kind}, got {value!r}") from None
    if not items:
        raise RobustSNNError(f"{name} is empty")
    return items


def _int_list(value: Optional[str], name: str) -> Optional[List[int]]:
    items = _number_list(value, name, int)
    if items is not None and any(v < 1 for v in items):
        raise RobustSNNError(f"{name} must be positive integers, got {value!r}")
    return items


def _command_line() -> str:
    return "robust-snn " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


#: commands that shard their work under torchrun
DISTRIBUTED_COMMANDS = ("train", "attack", "sweep")

checkpoint_option = click.option(
    "--checkpoint", type=click.Path(dir_okay=False), default=None, help="Checkpoint file (default: the shipped checkpoints/csnn-mnist.pt)."
)
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), default=None, help="torchvision-layout data root (default: $ROBUST_SNN_DATA or ~/.cache/robust-snn)."
)
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps.")
force_option = click.option("--force", is_flag=True, help="Overwrite output files that already exist (refused otherwise).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robust-snn")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """robust-snn: adversarial robustness of spiking neural networks."""
    from .distributed import launched_by_torchrun

    try:
        under_torchrun = launched_by_torchrun()
    except RobustSNNError as e:
        raise click.ClickException(str(e)) from None
    if ctx.invoked_subcommand not in DISTRIBUTED_COMMANDS and under_torchrun:
        raise click.ClickException(f"'{ctx.invoked_subcommand}' runs as one process; under torchrun only "
                                   f"{', '.join(DISTRIBUTED_COMMANDS)} do (see README, 'Scaling out')")
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("robust_snn").setLevel(level)
    from .utils import keep_freed_memory, strict_fp32

    keep_freed_memory()  # big [T*B, ...] buffers are reused instead of page-faulted in again
    strict_fp32()  # GPU results equal to the CPU's (TF32 convolutions flip spikes)


@main.command()
@click.option("--model", "arch", default="csnn", show_default=True, help="csnn, csnn-deep, fcsnn, scnn (the N-MNIST seed's "
              "SpikingCNN) or sresnet (its SpikingResNet: ALIF convolution, two residual LIF blocks, Synaptic layer, LIF output).")
@click.option("--dataset", default="mnist", show_default=True, help="mnist, fashion-mnist, cifar10 or nmnist (event frames, "
              "tonic's layout under --data-dir; `robust-snn make-nmnist` writes a synthetic set).")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--num-steps", type=int, default=8, show_default=True, help="Time steps T.")
@click.option("--encoding", default="direct", show_default=True, help="direct, rate or latency.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Checkpoint to write (.pt).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--optimizer", default="adam", show_default=True, help="adam, adamw or sgd.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--scheduler", default="cosine", show_default=True, help="cosine, step or none.")
@click.option("--loss", default="ce", show_default=True, help="ce (cross-entropy on spike counts; count: the same loss, the N-MNIST "
              "seed's name) or mse (spike-count MSE).")
@click.option("--neuron", default="lif", show_default=True, help="Spiking neuron: lif, alif (adaptive threshold) or synaptic "
              "(current-based); see `robust-snn info`.")
@click.option("--beta", type=float, default=0.5, show_default=True, help="Membrane decay.")
@click.option("--alpha", type=float, default=0.9, show_default=True,
              help="synaptic: synaptic-current decay; alif: decay of the threshold adaptation.")
@click.option("--adapt", type=float, default=0.2, show_default=True, help="alif: threshold increase per spike.")
@click.option("--threshold", type=float, default=1.0, show_default=True)
@click.option("--reset", "reset_mechanism", default="subtract", show_default=True, help="subtract, zero or none.")
@click.option("--surrogate", default="fast_sigmoid:slope=25", show_default=True, help="Training surrogate, e.g. atan:alpha=2.")
@click.option("--dropout", type=float, default=None, help="Dropout before FC layers (default: csnn-deep 0.2, others 0).")
@click.option("--test-only", is_flag=True, help="No training: evaluate the finished --out checkpoint on the test split "
              "(--test-limit applies; the model comes from the checkpoint).")
@click.option("--channels", default=None, help="Conv widths, e.g. 32,64 (default: architecture's).")
@click.option("--hidden", default=None, help="Hidden FC widths, e.g. 512.")
@click.option("--readout", default="count", show_default=True, help="count (output spike counts) or membrane.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-split", type=float, default=0.05, show_default=True, help="Fraction of training data held out.")
@click.option("--limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--test-limit", type=int, default=None, help="Evaluate on only the first N test images.")
@click.option("--augment-shift", type=int, default=0, show_default=True, help="Random translation of up to N pixels (augmentation).")
@click.option("--adv", default="none", show_default=True, help="Adversarial training: none, fgsm-rs, pgd (Madry et al.), trades "
              "or mart.")
@click.option("--adv-eps", type=float, default=0.3, show_default=True, help="L-inf radius of adversarial training (pixel scale).")
@click.option("--adv-steps", type=int, default=7, show_default=True, help="Attack steps for pgd, trades and mart.")
@click.option("--adv-attack", default="pgd", show_default=True, help="Inner maximizer: pgd (fixed step) or apgd (APGD, the "
              "standard suite's first attack: adaptive step, best-loss iterate).")
@click.option("--adv-gradients", default=None, help="Craft each batch through a gradient drawn from this family, e.g. "
              "model,fast_sigmoid:slope=5,atan,rate (model: the training surrogate; default: only the training surrogate).")
@click.option("--adv-alpha", type=float, default=None, help="Attack step size (default: 1.25 eps for fgsm-rs, 2.5 eps / steps otherwise).")
@click.option("--adv-warmup", type=int, default=0, show_default=True, help="Epochs over which eps ramps up linearly.")
@click.option("--trades-beta", type=float, default=6.0, show_default=True, help="TRADES and MART robustness weight.")
@click.option("--val-attack-samples", type=int, default=500, show_default=True,
              help="Adversarial training: validation images attacked every epoch with the validation suite.")
@click.option("--val-attack-steps", type=int, default=50, show_default=True,
              help="Adversarial training: APGD steps of each validation-suite stage.")
@click.option("--keep", default="best", show_default=True, help="Adversarial training with a validation split: keep the "
              "epoch with the best validated robust accuracy (best) or the last epoch (last).")
@click.option("--noise-sigma", type=float, default=0.0, show_default=True, help="Gaussian noise augmentation (for randomized smoothing).")
@click.option("--lr-scaling", default="none", show_default=True,
              help="Under torchrun: scale --lr with the number of processes: none, linear or sqrt.")
@click.option("--resume/--no-resume", default=False, show_default=True, help="Continue an interrupted run.")
@force_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@data_dir_option
@device_option
@_user_errors
def train(arch: str, dataset: str, epochs: int, num_steps: int, encoding: str, out: str, batch_size: int, lr: float,
          optimizer: str, weight_decay: float, scheduler: str, loss: str, neuron: str, beta: float, alpha: float, adapt: float,
          threshold: float,
          reset_mechanism: str, surrogate: str, dropout: Optional[float], channels: Optional[str], hidden: Optional[str],
          readout: str, seed: int, val_split: float, limit: Optional[int], test_limit: Optional[int], augment_shift: int, adv: str,
          adv_eps: float, adv_steps: int, adv_attack: str, adv_gradients: Optional[str], adv_alpha: Optional[float],
          adv_warmup: int, trades_beta: float, val_attack_samples: int, val_attack_steps: int, keep: str, noise_sigma: float,
          lr_scaling: str, resume: bool, force: bool, quiet: bool, data_dir: Optional[str], device: str, test_only: bool) -> None:
    """Train a spiking classifier and write a checkpoint with logs and curves.

    Runs data-parallel under torchrun: torchrun --nproc_per_node=N -m robust_snn train ...
    """
    from . import distributed
    from .training import TrainSettings, train as train_fn

    model_config = {
        "arch": arch, "num_steps": num_steps, "encoding": encoding, "neuron": neuron, "beta": beta, "alpha": alpha, "adapt": adapt,
        "threshold": threshold,
        "reset_mechanism": reset_mechanism, "surrogate": surrogate, "dropout": dropout,
        "channels": _int_list(channels, "--channels"), "hidden": _int_list(hidden, "--hidden"), "readout": readout,
    }
    settings = TrainSettings(
        dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
        scheduler=scheduler, loss=loss, seed=seed, val_split=val_split, limit=limit, test_limit=test_limit,
        augment_shift=augment_shift, adv=adv, adv_eps=adv_eps, adv_steps=adv_steps, adv_alpha=adv_alpha,
        adv_warmup=adv_warmup, trades_beta=trades_beta, noise_sigma=noise_sigma, lr_scaling=lr_scaling,
        adv_attack=adv_attack.strip().lower(), adv_gradients=adv_gradients, val_attack_samples=val_attack_samples,
        val_attack_steps=val_attack_steps, keep=keep.strip().lower(),
    )
    if test_only:
        from .training import evaluate_trained

        if resume:
            raise RobustSNNError("--test-only evaluates a finished checkpoint; leave out --resume")
        settings.validate()
        res = evaluate_trained(out, settings, data_dir=data_dir, device=device, progress=not quiet)
        click.echo(f"{res['checkpoint']}: test accuracy {100 * res['test_accuracy']:.2f}% (n={res['test_n']}; data: {res['data']})")
        return
    _, metrics = train_fn(model_config, settings, out=out, data_dir=data_dir, device=device, resume=resume, force=force,
                          command=_command_line(), progress=not quiet)  # joins the process group under torchrun
    is_main = distributed.info().is_main
    distributed.shutdown()
    if not is_main:
        return
    click.echo(
        f"saved {metrics['checkpoint']}: test accuracy {100 * metrics['test_accuracy']:.2f}% "
        f"(n={metrics['test_n']}), {metrics['train_seconds']:.0f} s training"
        + ("; data: " + metrics["test_data"] if "synthetic" in metrics.get("test_data", "") else "")
    )


@main.command(name="eval")
@checkpoint_option
@click.option("--dataset", default=None, help="Dataset (default: the checkpoint's).")
@click.option("--split", default="test", show_default=True, help="test or train.")
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--num-steps", type=int, default=None, help="Override T.")
@click.option("--samples", type=int, default=None, help="Forward samples for stochastic encoders (default 8).")
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write confusion matrix PNG and metrics JSON here.")
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_dir_option
@device_option
@_user_errors
def eval_cmd(checkpoint: Optional[str], dataset: Optional[str], split: str, limit: Optional[int], num_steps: Optional[int],
             samples: Optional[int], batch_size: int, out: Optional[str], force: bool, as_json: bool, data_dir: Optional[str],
             device: str) -> None:
    """Clean accuracy, per-class accuracy and firing rate per layer."""
    from .checkpoint import load_model
    from .data import data_source, load_split
    from .evaluation import evaluate_clean

    if samples is not None and samples < 1:
        raise RobustSNNError(f"--samples must be >= 1, got {samples}")
    if out:
        from .utils import claim_outputs

        claim_outputs(out, ["confusion.png", "eval.json"], force=force)
    model = load_model(checkpoint, device=device, num_steps=num_steps)
    ds = dataset or model.config["dataset"]
    x, y = load_split(ds, split, data_dir=data_dir, limit=limit, num_steps=model.num_steps)
    res = evaluate_clean(model, x, y, batch_size=batch_size, samples=samples, progress=not as_json)
    result = {"checkpoint": model.checkpoint_path, "dataset": ds, "split": split, "data": data_source(ds, split, data_dir=data_dir), **res}
    if out:
        from .plotting import confusion_figure
        from .utils import save_figure_atomic, write_json_atomic
        import matplotlib.pyplot as plt

        fig = confusion_figure(res["confusion"], model.config["classes"], title=f"{ds} {split}: accuracy {100 * res['accuracy']:.2f}%")
        save_figure_atomic(fig, Path(out) / "confusion.png", dpi=110)
        plt.close(fig)
        write_json_atomic(Path(out) / "eval.json", result)
        result["files"] = [str(Path(out) / "confusion.png"), str(Path(out) / "eval.json")]
    if as_json:
        _echo_json(result)
        return
    click.echo(f"checkpoint: {result['checkpoint']}")
    click.echo(f"{ds} {split}: n={res['n']}, T={res['num_steps']}, forward samples={res['samples']}  (data: {result['data']})")
    click.echo(f"accuracy: {100 * res['accuracy']:.2f}%  ({res['img_per_s']:.0f} img/s)")
    click.echo("per-class accuracy: " + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in res["per_class"].items() if v is not None))
    click.echo("mean firing rate (spikes/neuron/step): " + ", ".join(f"{k} {v:.3f}" for k, v in res["firing_rates"].items()))
    if out:
        click.echo(f"wrote {', '.join(result['files'])}")



def _limit(value: Optional[str], default: Optional[int]) -> Optional[int]:
    """``--limit``: a positive integer or ``all`` (``None``: the whole split)."""
    if value is None:
        return default
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise RobustSNNError(f"--limit must be a positive integer or 'all', got {value!r}") from None
    if n < 1:
        raise RobustSNNError(f"--limit must be a positive integer or 'all', got {value!r}")
    return n


#: ``robust-snn attack`` evaluates this many test images unless ``--limit`` says otherwise
DEFAULT_ATTACK_LIMIT = 1000


@main.command()
@checkpoint_option
@click.option("--suite", default=None, help="Attack suite (default: standard, the strong SNN-aware cascade; validation: its first "
              "three stages, a fast screen; quick: FGSM + PGD smoke test; events: for event models). Not with --attack.")
@click.option("--attack", "attack_names", default=None, help="Run exactly these attacks instead of a suite, comma-separated, "
              "each optionally with hyperparameters: fgsm,pgd:steps=50,step_scale=2 (see `robust-snn info`); each attacks every "
              "clean-correct input.")
@click.option("--eps", default=None, help="L∞ budgets on the [0, 1] scale, comma-separated  [default: 0.1]")
@click.option("--eps-l2", default=None, help="L2 radii for L2 attacks (pgdl2, cw, deepfool), comma-separated (default 1.5).")
@click.option("--budget", default=None, help="Event budgets (flipped events; with --threat add-only, added events) for event "
              "attacks on event models (pga, pga-prob, flip-greedy, flip-random), comma-separated  [default: 10]")
@click.option("--threat", type=click.Choice(["l0", "add-only"], case_sensitive=False), default=None,
              help="Threat model of every event attack on an event model: l0 (events added or removed) or add-only (events "
                   "injected, never erased)  [default: l0]")
@click.option("--steps", type=int, default=None, help="Iterations of iterative attacks (default: per attack, see info).")
@click.option("--queries", type=int, default=None, help="Queries of the Square attack (default 5000).")
@click.option("--restarts", type=int, default=1, show_default=True, help="Runs per attack; later runs attack only still-robust inputs.")
@click.option("--surrogate", default=None, help="Attack gradient: a surrogate spec, 'rate', or 'ensemble' (default: the model's own).")
@click.option("--eot-samples", type=int, default=None, help="Encoder draws per gradient for stochastic models (default 8).")
@click.option("--samples", type=int, default=None, help="Forward draws to judge stochastic models (default 8).")
@click.option("--dataset", default=None, help="Dataset (default: the checkpoint's).")
@click.option("--limit", default=None, help=f"The first N test images, or 'all'  [default: {DEFAULT_ATTACK_LIMIT}]")
@click.option("--num-steps", type=int, default=None, help="Override T.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Save adversarial examples, results JSON and a figure here.")
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--checks/--no-checks", default=True, show_default=True, help="Sanity checks (Carlini et al. 2019).")
@click.option("--check-convergence", is_flag=True, help="Rerun the last gradient stage with twice the steps on the survivors "
              "among the first 200 images; the check fails if that breaks more than 1 % of them.")
@click.option("--defense", "defenses", multiple=True, help="Input preprocessor, repeatable, applied in order: "
              "blur:sigma=1.0,kernel=5 or quantize:bits=4.")
@click.option("--detector", default=None, help="Detector with rejection, e.g. tcc:fpr=0.05 (calibrated on held-out clean data).")
@click.option("--adaptive/--no-adaptive", default=True, show_default=True,
              help="Attack the defended model (adaptive) or craft on the undefended model and transfer.")
@click.option("--calibration-size", type=int, default=1000, show_default=True, help="Clean images used to calibrate --detector.")
@click.option("--cuda-graphs", is_flag=True, help="Replay each attack step as CUDA graphs (the same kernels, fewer launches; "
              "deterministic models on a CUDA device).")
@click.option("--journal", type=click.Path(file_okay=False), default=None,
              help="Record every finished batch of every attack in this folder; run the same command again with the same "
              "--journal and it skips what is recorded: an interrupted run continues where it stopped, with the numbers an "
              "uninterrupted run gives (same device type, any number of processes).")
@data_dir_option
@device_option
@_user_errors
def attack(checkpoint: Optional[str], suite: Optional[str], attack_names: Optional[str], eps: Optional[str], eps_l2: Optional[str],
           budget: Optional[str], threat: Optional[str], steps: Optional[int], queries: Optional[int], restarts: int, surrogate: Optional[str], eot_samples: Optional[int],
           samples: Optional[int], dataset: Optional[str], limit: Optional[str], num_steps: Optional[int], batch_size: int, seed: int,
           out: Optional[str], force: bool, as_json: bool, checks: bool, check_convergence: bool, defenses: tuple, detector: Optional[str],
           adaptive: bool, calibration_size: int, cuda_graphs: bool, journal: Optional[str], data_dir: Optional[str],
           device: str) -> None:
    """Attack a checkpoint through surrogate gradients and report robust accuracy.

    By default runs the standard suite (a cascade of strong SNN-aware attacks, ending with
    gradient-free Square) on the first 1,000 test images; the number to report is the
    per-sample worst case with its 95 % interval.

    Shards the test set under torchrun (torchrun --nproc_per_node=N -m robust_snn attack ...);
    rank 0 prints and writes exactly what one process would.
    """
    import warnings

    import torch

    from . import distributed

    from .attacks import evaluate
    from .attacks.checks import RobustnessWarning
    from .checkpoint import load_model
    from .data import data_source
    from .reporting import format_table, json_ready, save_attack_outputs
    from .surrogates import parse_spec
    from .utils import resolve_device

    from .attacks import get_spec, get_suite
    from .attacks.registry import event_attack_names, parse_attack, split_attack_list
    from .attacks.suite import DEFAULT_SUITE, EVENTS_SUITE, default_suite

    if attack_names is not None and suite is not None:
        raise RobustSNNError("give --attack (exactly these attacks) or --suite, not both")
    names = None if attack_names is None else split_attack_list(attack_names)
    if names is not None and not names:
        raise RobustSNNError("--attack is empty; name at least one attack (see `robust-snn info`)")
    # no suite named: the events suite when only event budgets are given (the model may still switch it, below)
    suite_name = suite or (EVENTS_SUITE if budget is not None and eps is None and eps_l2 is None else DEFAULT_SUITE)
    specs = [parse_attack(a)[0] for a in names] if names is not None else [get_spec(st.attack) for st in get_suite(suite_name).stages]
    norms = {sp.norm for sp in specs}

    def check_knobs(specs: list) -> None:
        for opt, value, knob in (("--steps", steps, "steps"), ("--queries", queries, "queries")):
            if value is not None and not any(knob in sp.defaults for sp in specs):
                raise RobustSNNError(f"{opt} is used by none of the attacks ({', '.join(sp.name for sp in specs)}); leave it out")

    check_knobs(specs)
    if eps is not None and "Linf" not in norms:
        raise RobustSNNError("--eps sets L∞ budgets, but none of the attacks is an L∞ attack; give the L2 radius with --eps-l2")
    if eps_l2 is not None and "L2" not in norms:
        raise RobustSNNError("--eps-l2 sets L2 radii, but none of the attacks is an L2 attack (pgdl2, cw, deepfool); use --eps")
    eps_list = _number_list(eps if eps is not None else "0.1", "--eps")
    eps_l2_list = _number_list(eps_l2, "--eps-l2")
    if budget is not None and "L0" not in norms:
        raise RobustSNNError(f"--budget sets event budgets, but none of the attacks is an event attack ({', '.join(event_attack_names())})")
    budget_list = _number_list(budget, "--budget")
    n_limit = _limit(limit, DEFAULT_ATTACK_LIMIT)
    if surrogate is not None and surrogate != "ensemble":
        parse_spec(surrogate)
    if cuda_graphs and (resolved := resolve_device(device)).type != "cuda":  # before anything is written or started
        raise RobustSNNError(f"--cuda-graphs needs a CUDA device, but the attack runs on {resolved}: add "
                             "--device cuda (on a machine with CUDA), or leave --cuda-graphs out")
    if out:
        from .reporting import ATTACK_OUTPUTS
        from .utils import claim_outputs

        claim_outputs(out, ATTACK_OUTPUTS, force=force)
    if journal:
        from .utils import claim_outputs

        claim_outputs(journal, (), option="--journal")  # writable, before anything is loaded
    dd = distributed.init(device)
    device = distributed.device_for(device)
    model = load_model(checkpoint, device=device, num_steps=num_steps)
    if threat is not None and not getattr(model, "events", False):
        raise RobustSNNError(f"--threat {threat} is the threat model of event attacks, but this model takes images: leave --threat "
                             "out (image budgets are --eps for L∞ and --eps-l2 for L2)")
    if names is None and suite is None and suite_name != default_suite(model):
        if not getattr(model, "events", False):  # --budget alone picked the events suite
            raise RobustSNNError("this model takes images: --budget sets event budgets for event models; use --eps (or --eps-l2)")
        if eps is not None or eps_l2 is not None:
            raise RobustSNNError("this model takes event tensors: its budgets are events (--budget), not --eps/--eps-l2")
        suite_name = default_suite(model)  # an event model: its own default suite
        check_knobs([get_spec(st.attack) for st in get_suite(suite_name).stages])
    ds = dataset or model.config["dataset"]
    target, source, x, y, notes = _defended_setup(model, ds, defenses=defenses, detector=detector, adaptive=adaptive,
                                                  calibration_size=calibration_size, limit=n_limit, data_dir=data_dir)
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RobustnessWarning)
        result = evaluate(target, x, y, attacks=names, suite=None if names is not None else suite_name, eps=eps_list,
                          eps_l2=eps_l2_list, eps_l0=budget_list, steps=steps, queries=queries, restarts=restarts, surrogate=surrogate,
                          eot_samples=eot_samples, samples=samples, batch_size=batch_size, seed=seed, checks=checks,
                          progress=not as_json and dd.is_main, keep_examples=out is not None, source_model=source,
                          convergence=check_convergence, threat=threat, graphs="cuda" if cuda_graphs else None,
                          journal=journal, journal_note={"checkpoint": model.checkpoint_path, "command": _command_line()})
    distributed.shutdown()
    if not dd.is_main:
        return
    summary = json_ready(result, checkpoint=model.checkpoint_path, dataset=ds, split="test", num_steps=model.num_steps,
                         defense=getattr(target, "describe", lambda: "none")(), adaptive=adaptive, notes=notes,
                         command=_command_line())
    summary["data"] = data_source(ds, "test", data_dir=data_dir)  # says so when the test data is synthetic N-MNIST
    if out:
        summary["files"] = save_attack_outputs(out, result, indices=torch.arange(len(x)), x=x, y=y, model=model, summary=summary)
    if as_json:
        _echo_json(summary)
        return
    for w in caught:
        if issubclass(w.category, RobustnessWarning):
            click.echo(f"warning: {w.message}", err=True)
    click.echo(f"checkpoint: {model.checkpoint_path}  ({ds} test, T={model.num_steps})")
    if defenses or detector:
        click.echo(f"defense: {summary['defense']}  ({'adaptive' if adaptive else 'non-adaptive: examples crafted on the undefended model'})")
    for note in notes:
        click.echo(f"note: {note}", err=True)
    click.echo(format_table(result))
    if journal:
        j = result["journal"]
        click.echo(f"journal: {j['reused_chunks']} finished batches reused, {j['written_chunks']} recorded ({j['dir']})")
    if out:
        click.echo(f"wrote {', '.join(summary['files'])}")


def _defended_setup(model: Any, ds: str, *, defenses: Sequence[str], detector: Optional[str], adaptive: bool,
                    calibration_size: int, limit: Optional[int], data_dir: Optional[str]) -> tuple:
    """The model to evaluate (defended or not), the model to craft on (``None``: the same), test data, notes."""
    from .data import load_split
    from .defenses.registry import build_defended, calibration_split

    notes: List[str] = []
    if not defenses and detector is None:
        if not adaptive:
            raise RobustSNNError("--no-adaptive needs a --defense or --detector to transfer to")
        x, y = load_split(ds, "test", data_dir=data_dir, limit=limit, num_steps=model.num_steps)
        return model, None, x, y, notes
    calib = None
    if detector is not None:
        x, y, calib, note = calibration_split(model, ds, n=calibration_size, limit=limit, data_dir=data_dir)
        if note:
            notes.append(note)
    else:
        x, y = load_split(ds, "test", data_dir=data_dir, limit=limit, num_steps=model.num_steps)
    defended = build_defended(model, list(defenses), detector, calibration=calib)
    return defended, (None if adaptive else model), x, y, notes


@main.command()
@checkpoint_option
@click.option("--sigma", type=float, default=0.25, show_default=True, help="Gaussian noise level (pixel scale).")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Monte-Carlo samples for the bound.")
@click.option("--n0", type=int, default=100, show_default=True, help="Samples to pick the top class.")
@click.option("--alpha", type=float, default=0.001, show_default=True, help="Failure probability of the certificate.")
@click.option("--limit", type=int, default=None, help="Only the first N test images.")
@click.option("--skip", type=int, default=1, show_default=True, help="Certify every k-th image (as in Cohen et al.).")
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write certify.json, certify.csv and certify.png here.")
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_dir_option
@device_option
@_user_errors
def certify(checkpoint: Optional[str], sigma: float, n: int, n0: int, alpha: float, limit: Optional[int], skip: int,
            batch_size: int, seed: int, out: Optional[str], force: bool, as_json: bool, data_dir: Optional[str], device: str) -> None:
    """Randomized-smoothing L2 certificates (Cohen et al. 2019): certified accuracy vs radius."""
    from .checkpoint import load_model
    from .data import load_split
    from .defenses.smoothing import certified_accuracy_figure, certify_dataset

    if skip < 1:
        raise RobustSNNError(f"--skip must be >= 1, got {skip}")
    if out:
        from .utils import claim_outputs

        claim_outputs(out, ["certify.json", "certify.csv", "certify.png"], force=force)
    model = load_model(checkpoint, device=device)
    x, y = load_split(model.config["dataset"], "test", data_dir=data_dir, limit=limit, num_steps=model.num_steps)
    idx = list(range(0, len(x), skip))
    res = certify_dataset(model, x[idx], y[idx], sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                          indices=idx, progress=not as_json)
    res = {"checkpoint": model.checkpoint_path, "command": _command_line(), **res}
    if out:
        import csv
        import io

        import matplotlib.pyplot as plt

        from .utils import save_figure_atomic, write_json_atomic, write_text_atomic

        d = Path(out)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(res["rows"][0].keys()))
        w.writeheader()
        w.writerows(res["rows"])
        write_text_atomic(d / "certify.csv", buf.getvalue())
        fig = certified_accuracy_figure([res])
        save_figure_atomic(fig, d / "certify.png", dpi=110)
        plt.close(fig)
        write_json_atomic(d / "certify.json", res)
        res["files"] = [str(d / f) for f in ("certify.json", "certify.csv", "certify.png")]
    if as_json:
        _echo_json(res)
        return
    click.echo(f"checkpoint: {res['checkpoint']}  sigma={sigma:g} n0={n0} n={n} alpha={alpha:g}  ({res['count']} images, {res['seconds']:.0f} s)")
    click.echo(f"smoothed accuracy {100 * res['accuracy']:.2f}%, abstained {100 * res['abstain_rate']:.2f}%, "
               f"mean certified radius {res['mean_certified_radius']:.3f}")
    click.echo("certified accuracy at L2 radius: " + ", ".join(f"{r['radius']:g}: {100 * r['certified_accuracy']:.1f}%" for r in res["table"]))
    if out:
        click.echo(f"wrote {', '.join(res['files'])}")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output folder (default: experiments/results/NAME).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Skip finished cells; --no-resume moves old results aside.")
@click.option("--max-cells", type=int, default=None, help="Stop after this many new cells.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_dir_option
@_user_errors
def sweep(spec: str, out: Optional[str], resume: bool, max_cells: Optional[int], quiet: bool, as_json: bool, data_dir: Optional[str]) -> None:
    """Run an experiment spec (TOML): every model x defense x attack x eps (event models: budget) x T cell, resumable.

    Shards each cell's test set under torchrun (torchrun --nproc_per_node=N -m robust_snn sweep ...).
    """
    from . import distributed
    from .experiments.runner import run_sweep
    from .experiments.spec import load_spec

    s = load_spec(spec)
    if max_cells is not None and max_cells < 1:
        raise RobustSNNError(f"--max-cells must be >= 1, got {max_cells}")
    out_dir = Path(out) if out else Path("experiments") / "results" / s.name
    summary = run_sweep(s, out_dir, resume=resume, data_dir=data_dir, progress=not (quiet or as_json),
                        max_cells=max_cells)  # joins the process group under torchrun
    is_main = distributed.info().is_main
    distributed.shutdown()
    if not is_main:
        return
    if as_json:
        _echo_json(summary)
        return
    state = "complete" if summary["complete"] else f"{summary['done']}/{summary['cells']} cells done; rerun to resume"
    click.echo(f"sweep {s.name}: {summary['new']} new cells in {summary['seconds']:.0f} s, {state}")
    click.echo(f"wrote {', '.join(summary['files'])}")


@main.command()
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for the plots (default: beside RESULTS).")
@force_option
@_user_errors
def plot(results: str, out: Optional[str], force: bool) -> None:
    """Plot accuracy vs eps (event models: vs budget; and vs T) from a sweep's results.csv or results.jsonl."""
    from .experiments.plots import PLOT_OUTPUTS, write_plots
    from .experiments.results import load_results
    from .utils import claim_outputs

    p = Path(results)
    rows, worst = load_results(p)
    folder = claim_outputs(Path(out) if out else p.parent, PLOT_OUTPUTS, force=force)
    files = write_plots(folder, rows, worst_rows=worst)
    click.echo(f"wrote {', '.join(files)}")


@main.command()
@checkpoint_option
@click.option("--index", type=int, default=None, help="Test image index (default: 0, or the first of --digit).")
@click.option("--digit", type=int, default=None, help="Use the first correctly classified test image of this class.")
@click.option("--attack", "attack_name", default=None, help="Attack to visualize  [default: pgd; event models: flip-greedy]")
@click.option("--eps", type=float, default=None, help="Image models: L∞ budget (L2 radius for L2 attacks)  [default: 0.1]")
@click.option("--budget", type=int, default=None, help="Event models: L0 budget, the most flipped event entries  [default: 50]")
@click.option("--steps", type=int, default=None, help="Attack iterations.")
@click.option("--surrogate", default=None, help="Attack gradient (see attack --help).")
@click.option("--timestep", type=int, default=None, help="Time step of the conv spike maps (default: T // 2; event models: the "
              "time bin in which the attack changes the first conv layer most).")
@click.option("--out", type=click.Path(file_okay=False), default="figures", show_default=True, help="Output folder.")
@click.option("--format", "fmt", type=click.Choice(["png", "svg", "gif"]), default="png", show_default=True,
              help="png/svg: every figure in that format (plus the GIF animation); gif: only the animation.")
@click.option("--tsne-samples", type=int, default=200, show_default=True, help="Test images in the t-SNE figure (0: skip).")
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_dir_option
@device_option
@_user_errors
def visualize(checkpoint: Optional[str], index: Optional[int], digit: Optional[int], attack_name: Optional[str], eps: Optional[float],
              budget: Optional[int], steps: Optional[int],
              surrogate: Optional[str], timestep: Optional[int], out: str, fmt: str, tsne_samples: int, seed: int, force: bool,
              as_json: bool, data_dir: Optional[str], device: str) -> None:
    """Clean vs adversarial spike trains of one test input, layer by layer, plus a t-SNE and a distance table.

    Event models (N-MNIST): an event attack within --budget flipped events; figure 1 shows the clean, adversarial
    and added/removed events per time bin, and the GIF plays them bin by bin.
    """
    from .checkpoint import load_model
    from .visualization import render_all

    from .utils import claim_outputs
    from .visualization import OUTPUT_PATTERNS

    claim_outputs(out, OUTPUT_PATTERNS, force=force)
    model = load_model(checkpoint, device=device)
    summary = render_all(model, index=index, digit=digit, attack=attack_name, eps=eps, budget=budget, steps=steps, surrogate=surrogate,
                         timestep=timestep, out=out, fmt=fmt, tsne_samples=tsne_samples, seed=seed, data_dir=data_dir,
                         progress=not as_json)
    summary["command"] = _command_line()
    if as_json:
        _echo_json(summary)
        return
    from .visualization import format_distances

    if summary["norm"] == "L0":
        what = (f"test input {summary['index']}", f"budget {summary['budget']} (L0 {summary['l0']}: +{summary['events_added']} "
                f"added, -{summary['events_removed']} removed)")
    else:
        what = (f"test image {summary['index']}", f"eps={summary['eps']:g}")
    click.echo(f"{what[0]} (label {summary['label']}): clean prediction {summary['clean_prediction']}, "
               f"{summary['attack']} {what[1]} -> {summary['adversarial_prediction']}")
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
    click.echo(format_distances(summary["layers"]))
    click.echo(f"wrote {', '.join(summary['files'])}")


@main.command()
@checkpoint_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=7860, show_default=True)
@data_dir_option
@device_option
@_user_errors
def app(checkpoint: Optional[str], host: str, port: int, data_dir: Optional[str], device: str) -> None:
    """Interactive web app: draw a digit, watch the SNN decide, attack and defend it (needs the app extra)."""
    from .app import check_address, launch

    check_address(host, port)
    click.echo(f"robust-snn app on http://{host}:{port} (Ctrl+C to stop)")
    launch(checkpoint, host=host, port=port, data_dir=data_dir, device=device)


@main.command(name="make-nmnist")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Root folder (tonic's layout: OUT/NMNIST/Train|Test/<digit>/).")
@click.option("--split", default="test", show_default=True, help="train or test (the MNIST split to convert).")
@click.option("--limit", type=int, default=None, help="Only the first N digits.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--noise-hz", type=float, default=0.0, show_default=True, help="Background-activity events per pixel per second.")
@force_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@data_dir_option
@_user_errors
def make_nmnist_cmd(out: str, split: str, limit: Optional[int], seed: int, noise_hz: float, force: bool, quiet: bool,
                    data_dir: Optional[str]) -> None:
    """Write SYNTHETIC N-MNIST: an event-camera simulator replaying N-MNIST's saccades on MNIST digits.

    Real N-MNIST-format .bin files in tonic's layout (read them with tonic); not the real recordings.
    """
    from .events.synthetic import SensorModel
    from .events.writer import make_nmnist

    if limit is not None and limit < 1:
        raise RobustSNNError(f"--limit must be >= 1, got {limit}")
    if seed < 0:
        raise RobustSNNError(f"--seed must be >= 0, got {seed}")
    if not 0 <= noise_hz < float("inf"):
        raise RobustSNNError(f"--noise-hz must be a finite number >= 0, got {noise_hz}")
    folder, n = make_nmnist(out, split=split, limit=limit, seed=seed, data_dir=data_dir, sensor=SensorModel(noise_hz=noise_hz),
                            force=force, progress=not quiet)
    click.echo(f"wrote {n} synthetic N-MNIST files under {folder} (simulated from MNIST {split}; not the real recordings)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_user_errors
def info(as_json: bool) -> None:
    """Models, encoders, surrogates, attacks and the default checkpoint."""
    from .info import gather_info

    data = gather_info()
    if as_json:
        _echo_json(data)
        return
    click.echo("models:     " + ", ".join(data["models"]))
    click.echo("neurons:    " + "; ".join(f"{k}: {v}" for k, v in data["neurons"].items()))
    click.echo("threats:    " + "; ".join(f"{k}: {v['description']} (budget: {v['units']})" for k, v in data["threat_models"].items()))
    click.echo("encoders:   " + ", ".join(f"{k}{' (stochastic)' if v['stochastic'] else ''}" for k, v in data["encoders"].items()))
    click.echo("datasets:   " + ", ".join(data["datasets"]))
    click.echo("surrogates: " + ", ".join(data["surrogates"]) + "; attack-only: " + ", ".join(data["attack_gradients"]))
    click.echo("suites:")
    for name, su in data["suites"].items():
        stages = " -> ".join(st["attack"] + (f"[{st['gradient']}]" if st["gradient"] else "") for st in su["stages"])
        default = " (default)" if su["default"] else " (default for event models)" if su.get("default_for_event_models") else ""
        click.echo(f"  {name:<9}{default} {stages}" + ("" if su["robustness_claim"] else "  (not a robustness claim)"))
    if data.get("attacks"):
        click.echo("attacks:")
        for name, a in data["attacks"].items():
            click.echo(f"  {name:<11} {a['norm']:<4} {a['description']}  defaults: {a['defaults']}")
    d = data["default_checkpoint"]
    if d.get("path"):
        acc = d.get("test_accuracy")
        acc_s = f"{100 * acc:.2f}% clean on {d.get('test_n')} test images" if acc is not None else "accuracy unknown"
        click.echo(f"default checkpoint: {d['path']} ({d.get('arch')}, T={d.get('num_steps')}, {d.get('encoding')}; {acc_s})")
    else:
        click.echo(f"default checkpoint: not installed ({d.get('error')})")


if __name__ == "__main__":  # pragma: no cover
    main()
