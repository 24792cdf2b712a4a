"""Speed benchmark: robust-snn's layer-by-layer simulation vs its peers on the same weights.

Peers (``--peers``, default: every one that is installed):

- ``snntorch``: the step-by-step snnTorch loop users write today (``robust_snn.reference``);
  its logits are asserted equal to robust-snn's.
- ``spikingjelly``: the same network written with SpikingJelly 2.0's multi-step LIF nodes
  (``LIFNode(step_mode='m')``, stateless layers in ``SeqToANNContainer``, the image repeated
  over T, ``functional.reset_net`` before every call), with the threshold and offset that make
  its reset by subtraction match snnTorch's (see :class:`SpikingJellyModel`). SpikingJelly
  picks its LIF implementation by device (its torch one on CPU; native CUDA, else Triton, on
  GPUs: override with its ``SJ_LIF_CUDA_IMPLEMENTATION``); the report names the one used.
  A benchmark-only dependency: ``pip install -e ".[bench]"``; without it this peer is
  skipped with a one-line note. Logits agree with robust-snn's on most samples, not
  necessarily all (ties: SpikingJelly fires at ``H >= threshold``, snnTorch at
  ``mem > threshold``); the agreement is asserted (>= 90 %) and reported.

On CUDA it also measures ``ours-graphed``: inference and PGD-10 through
:class:`robust_snn.graphs.GraphedClassifier` (each attack step replayed as CUDA graphs).

For each T and the batch size it reports training, inference and PGD-10 throughput,
peak memory, the robust-snn / peer ratio, and achieved GFLOP/s as a fraction of
this machine's fp32 matmul rate measured in the same run.

    python benchmarks/bench.py                    # T = 8 and 25, batch 128, CPU
    python benchmarks/bench.py --quick --json     # tiny smoke run
    python benchmarks/bench.py --peers spikingjelly --modes pgd10 --min-seconds 1
    python benchmarks/bench.py --device cuda

Weights: random, rescaled once so that every layer fires (:func:`calibrate`): with the plain
initialization no spike reaches the output and "equal logits" would compare zeros.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of the
process's peak RSS during that measurement, each measurement in a fresh subprocess.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from robust_snn.graphs import GraphedClassifier  # noqa: E402
from robust_snn.models import build_model  # noqa: E402
from robust_snn.neurons import LIF  # noqa: E402
from robust_snn.reference import StepByStepModel  # noqa: E402
from robust_snn.surrogates import parse_spec  # noqa: E402
from robust_snn.utils import keep_freed_memory, strict_fp32  # noqa: E402

MODES = ("train", "infer", "pgd10")
#: the peers robust-snn is compared with (``--peers``), in table order
PEERS = ("snntorch", "spikingjelly")
PEER_LABELS = {"snntorch": "snnTorch", "spikingjelly": "SJ"}
SPIKINGJELLY = "spikingjelly==2.0.0"
INSTALL_SPIKINGJELLY = f'pip install "{SPIKINGJELLY}"  (or: pip install -e ".[bench]")'
#: SpikingJelly's logits must equal robust-snn's on at least this fraction of samples (ties may differ)
MIN_AGREEMENT = 0.9


def matmul_gflops(device: torch.device, n: int = 1024, reps: int = 10, trials: int = 5) -> float:
    """Measured fp32 matmul rate (GFLOP/s) of this device: the best of ``trials`` timings.

    The best, not the mean: the rate is the machine's capability, and a shared CPU's
    momentary slowdowns would otherwise inflate the "% of matmul" column.
    """
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_flops(model, num_steps: int, *, layer_by_layer: bool) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image's forward pass, conv and linear layers only."""
    total = 0.0
    dev = next(model.parameters()).device
    x = torch.zeros(1, model.config["in_channels"], *model.config["image_size"], device=dev)
    h = model.preprocess(x)
    for i, stage in enumerate(model.stages):
        for layer in stage.layers:
            out = layer(h)
            if isinstance(layer, torch.nn.Conv2d):
                k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
                macs = out.numel() * k
            elif isinstance(layer, torch.nn.Linear):
                macs = layer.in_features * layer.out_features
            else:
                macs = 0
            steps = 1 if (i == 0 and layer_by_layer and model.encoder.static) else num_steps
            total += 2.0 * macs * steps
            h = out
        h = (h > 0).float()
    return total


def build(arch_args: Dict[str, Any], num_steps: int, device: torch.device, seed: int = 0):
    """The robust-snn model (random weights, calibrated to fire) and the snnTorch loop on its weights."""
    torch.manual_seed(seed)
    model = build_model(num_steps=num_steps, **arch_args).to(device).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    calibrate(model, torch.rand(64, model.config["in_channels"], *model.config["image_size"], generator=gen).to(device))
    return model, StepByStepModel(model).eval()


def calibrate(model, x: torch.Tensor, *, std: float = 1.0) -> None:
    """Rescale each stage's last weighted layer so its input current has standard deviation ``std`` × threshold.

    Stage by stage, on the images ``x``: with PyTorch's default initialization the currents
    shrink layer by layer and no spike reaches the output (all logits 0), so a comparison of
    logits would prove nothing. The cost of every measurement is the same either way.
    """
    thr = float(model.config["threshold"])
    with torch.no_grad():
        for stage in model.stages:
            seen: List[torch.Tensor] = []
            hook = stage.layers[-1].register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
            try:
                model(x)
            finally:
                hook.remove()
            scale = std * thr / float(torch.cat([s.flatten() for s in seen]).std().clamp_min(1e-12))
            layer = [m for m in stage.layers if isinstance(getattr(m, "weight", None), torch.Tensor)][-1]
            layer.weight.mul_(scale)
            if getattr(layer, "bias", None) is not None:
                layer.bias.mul_(scale)


# -- peers ---------------------------------------------------------------------------------------
class PeerUnsupported(Exception):
    """The peer cannot express this model (its message says why); the benchmark skips the peer."""


def spikingjelly_missing() -> Optional[str]:
    """None if SpikingJelly 2.x can be imported, else a one-line note saying how to install it."""
    try:
        import spikingjelly  # noqa: F401
        from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: F401
    except ImportError as e:
        return f"SpikingJelly peer skipped: it is not installed ({e}); install it with: {INSTALL_SPIKINGJELLY}"
    version = spikingjelly_version()
    if not version.startswith("2."):
        return f"SpikingJelly peer skipped: found spikingjelly {version}, the peer is written for 2.x; {INSTALL_SPIKINGJELLY}"
    return None


def spikingjelly_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spikingjelly")
    except PackageNotFoundError:
        return "unknown"


def _sj_surrogate(spec: str):
    """SpikingJelly's surrogate with robust-snn's spike-function shape (one SpikingJelly fuses into its kernel).

    ``fast_sigmoid:slope=k`` (1/(1+k|u|)^2) is ``SoftSign(alpha=k)`` up to the constant factor k/2,
    which scales every input gradient alike (one surrogate per layer on every path): PGD's
    sign steps are the same. ``sigmoid`` and ``atan`` are the same formulas.
    """
    from spikingjelly.activation_based import surrogate

    name, params = parse_spec(spec)
    if name == "fast_sigmoid":
        return surrogate.SoftSign(alpha=float(params.get("slope", 25.0)))
    if name == "sigmoid":
        return surrogate.Sigmoid(alpha=float(params.get("slope", 25.0)))
    if name == "atan":
        return surrogate.ATan(alpha=float(params.get("alpha", 2.0)))
    raise PeerUnsupported(f"no SpikingJelly surrogate fused into its LIF kernel matches {spec!r}")


#: layers after which a constant added to the current stays a constant added to the current
_SHIFT_EQUIVARIANT = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
                      nn.Dropout, nn.Dropout2d, nn.Identity)


def _add_to_current(layers: nn.Sequential, shift: float) -> None:
    """Add ``shift`` to the output of ``layers`` through the bias of its last biased layer (no extra op)."""
    for i in range(len(layers) - 1, -1, -1):
        if getattr(layers[i], "bias", None) is not None:
            with torch.no_grad():
                layers[i].bias.add_(shift)
            return
        if not isinstance(layers[i], _SHIFT_EQUIVARIANT):
            break
    raise PeerUnsupported(f"no bias to carry the SpikingJelly reset offset in {layers}")


class SpikingJellyModel(nn.Module):
    """A robust-snn CSNN written with SpikingJelly 2.0's multi-step LIF nodes, on copies of its weights.

    As SpikingJelly's tutorials write it: each stage's stateless layers in a
    ``SeqToANNContainer`` (run on ``[T*B, ...]``), then ``neuron.LIFNode(step_mode='m',
    decay_input=False, tau=1/(1-beta), v_reset=None, detach_reset=True)``; the normalized
    image repeated over T (direct encoding, so the first convolution runs T times);
    ``functional.reset_net`` before every call; logits = output spike counts.

    Same computation as robust-snn / snnTorch, not only the same cost. snnTorch's reset by
    subtraction is ``m[t] = beta*m[t-1] + I[t] - thr*s[t-1]``, ``s[t] = [m[t] > thr]``;
    SpikingJelly's is ``H[t] = beta*V[t-1] + X[t]``, ``s[t] = [H[t] >= v_th]``,
    ``V[t] = H[t] - v_th*s[t]``: its subtracted threshold decays once more. With
    ``v_th = thr/beta``, ``X = I + thr*(1-beta)^2/beta`` (folded into the layer's bias) and
    the initial ``V = thr*(1-beta)/beta``, ``H[t] = m[t] + thr*(1-beta)/beta`` at every step:
    the same spikes up to ties and float rounding, and the surrogate sees the same
    ``H - v_th = m - thr``. (With ``v_th = thr`` and no offset the logits agreed on only
    46 % of MNIST test images at T = 8 and 30 % at T = 25 with the shipped model.)

    Raises :class:`PeerUnsupported` for what this mapping does not cover (other neurons,
    resets, encodings, readouts, residual stages).
    """

    def __init__(self, model) -> None:
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        cfg = model.config
        beta, thr = float(cfg["beta"]), float(cfg["threshold"])
        problems = [what for what, ok in [
            (f"neuron {cfg['neuron']!r}", all(type(st.lif) is LIF for st in model.stages)),
            (f"reset {cfg['reset_mechanism']!r}", cfg["reset_mechanism"] == "subtract"),
            (f"encoding {cfg['encoding']!r}", cfg["encoding"] == "direct" and cfg["input"] == "image"),
            (f"readout {cfg['readout']!r}", cfg["readout"] == "count"),
            ("residual stages", all(st.shortcut is None for st in model.stages)),
            (f"beta {beta}", 0.0 < beta < 1.0),
        ] if not ok]
        if problems:
            raise PeerUnsupported("the SpikingJelly peer covers LIF (reset by subtraction), direct encoding, "
                                  f"count readout, plain stages and 0 < beta < 1; this model has {', '.join(problems)}")
        v0 = thr * (1 - beta) / beta
        blocks: List[nn.Module] = []
        for stage in model.stages:
            layers = copy.deepcopy(stage.layers)
            for m in layers:  # plain NCHW, as users write it (channels-last measured no faster for this peer)
                if isinstance(m, nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous()
            _add_to_current(layers, v0 * (1 - beta))
            node = neuron.LIFNode(tau=1.0 / (1.0 - beta), decay_input=False, v_threshold=thr / beta, v_reset=None,
                                  surrogate_function=_sj_surrogate(cfg["surrogate"]), detach_reset=True, step_mode="m")
            node.set_reset_value("v", v0)
            blocks += [layer.SeqToANNContainer(*layers), node]
        self.net = nn.Sequential(*blocks)
        self.num_steps = int(model.num_steps)
        self.register_buffer("mean", model.mean.clone())
        self.register_buffer("std", model.std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        x = (x - self.mean) / self.std
        x_seq = x.unsqueeze(0).repeat(self.num_steps, 1, 1, 1, 1)
        return self.net(x_seq).sum(0)


def spikingjelly_backend(device: torch.device) -> str:
    """The LIF implementation SpikingJelly binds on ``device`` ("torch" on CPU; "cuda" or "triton" on GPUs)."""
    if device.type != "cuda":
        return "torch"
    from spikingjelly.activation_based import functional

    return str(functional.neuron_implementation("lif", device)["implementation"])


def make_peer(name: str, model) -> nn.Module:
    """The peer ``name`` (one of :data:`PEERS`) on ``model``'s weights, in eval mode."""
    if name in ("snntorch", "baseline"):
        return StepByStepModel(model).eval()
    if name == "spikingjelly":
        return SpikingJellyModel(model).to(model.mean.device).eval()
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")


def peer_note(name: str, arch_args: Dict[str, Any], device: torch.device) -> Optional[str]:
    """None if the peer ``name`` can run this benchmark, else a one-line note why it is skipped."""
    if name != "spikingjelly":
        return None
    missing = spikingjelly_missing()
    if missing:
        return missing
    try:
        make_peer(name, build(arch_args, 2, device)[0])
    except PeerUnsupported as e:
        return f"SpikingJelly peer skipped: {e}"
    return None


def measure(impl: str, mode: str, arch_args: Dict[str, Any], num_steps: int, batch: int, device: torch.device,
            min_seconds: float) -> Dict[str, Any]:
    """One measurement: images/s for ``mode`` with robust-snn (``ours``, ``ours-unfused``, ``ours-graphed``) or a peer (:data:`PEERS`)."""
    import torchattacks

    impl = "snntorch" if impl == "baseline" else impl  # the snnTorch loop's former name
    keep_freed_memory()  # the CLI's allocator setting, applied to every implementation alike
    model, _ = build(arch_args, num_steps, device)
    if impl == "ours-unfused":  # layer by layer, LIF through plain autograd (the reference path)
        for lif in model.lif_layers:
            lif.fused = False
    if impl == "ours-graphed":
        net = GraphedClassifier(model, backend="cuda" if device.type == "cuda" else "eager")
    else:
        net = model if impl in ("ours", "ours-unfused") else make_peer(impl, model)
    x = torch.rand(batch, model.config["in_channels"], *model.config["image_size"], device=device)
    y = torch.randint(0, model.config["num_classes"], (batch,), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    atk = torchattacks.PGD(net, eps=0.1, alpha=0.025, steps=10) if mode == "pgd10" else None

    def once() -> None:
        if mode == "train":
            net.train()
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        elif mode == "infer":
            with torch.inference_mode():
                net(x)
        else:
            atk(x, y)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    once()  # warm-up
    _sync(device)
    n_done, t0 = 0, time.perf_counter()
    while True:
        once()
        n_done += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds and n_done >= 2:
            break
    img_s = n_done * batch / elapsed
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    # FLOPs per image: forward (+2x for backward) per model evaluation; the peers run conv1 at every step
    f = forward_flops(model, num_steps, layer_by_layer=impl.startswith("ours"))
    # train: forward + backward to the input and the weights (3 forwards' FLOPs); a PGD step needs only the
    # input gradient (2; autograd skips the weight gradients)
    per_image = {"train": 3 * f, "infer": f, "pgd10": 10 * 2 * f}[mode]
    res = {"impl": impl, "mode": mode, "num_steps": num_steps, "batch": batch, "img_per_s": img_s,
           "peak_mb": peak_mb, "gflops": img_s * per_image / 1e9, "seconds": elapsed}
    if impl == "spikingjelly":
        res["backend"] = spikingjelly_backend(device)
    return res


def _probe_batch(model, n: int = 64, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, model.config["in_channels"], *model.config["image_size"], generator=gen)
    return x.to(model.mean.device)


def check_same_logits(arch_args: Dict[str, Any], num_steps: int, device: torch.device) -> float:
    """Max |difference| of robust-snn's and the snnTorch loop's logits (asserted below 1e-4, and not all zero)."""
    model, baseline = build(arch_args, num_steps, device)
    x = _probe_batch(model)
    with torch.no_grad():
        a, b = model(x), baseline(x)
    diff = (a - b).abs().max().item()
    assert torch.allclose(a, b, atol=1e-4), f"robust-snn and the baseline disagree (max |diff| {diff})"
    assert a.abs().sum() > 0, "no output spikes: the logit comparison would prove nothing"
    return diff


def peer_agreement(peer: str, arch_args: Dict[str, Any], num_steps: int, device: torch.device) -> float:
    """Fraction of samples whose logits from ``peer`` equal robust-snn's (asserted at least :data:`MIN_AGREEMENT`)."""
    model, _ = build(arch_args, num_steps, device)
    net = make_peer(peer, model)
    x = _probe_batch(model)
    with torch.no_grad():
        a, b = model(x), net(x)
    assert a.abs().sum() > 0, "no output spikes: the logit comparison would prove nothing"
    agreement = float(torch.isclose(a, b, atol=1e-4).all(dim=1).float().mean())
    assert agreement >= MIN_AGREEMENT, (f"{peer} computes a different network: logits equal on only "
                                        f"{100 * agreement:.1f}% of samples (T={num_steps})")
    return agreement


def run_isolated(args: argparse.Namespace, impl: str, mode: str, num_steps: int) -> Dict[str, Any]:
    """Run one measurement in a fresh process so peak memory is its own."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_one", json.dumps(
        {"impl": impl, "mode": mode, "num_steps": num_steps, "batch": args.batch_size, "device": args.device,
         "arch": _arch_args(args), "min_seconds": args.min_seconds})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measuring {impl} {mode} T={num_steps} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _arch_args(args: argparse.Namespace) -> Dict[str, Any]:
    return {"arch": args.arch, "channels": [int(c) for c in args.channels.split(",")],
            "hidden": [int(h) for h in args.hidden.split(",")]}


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", default="8,25", help="time steps T to measure")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--arch", default="csnn")
    p.add_argument("--channels", default="16,32")
    p.add_argument("--hidden", default="256")
    p.add_argument("--min-seconds", type=float, default=3.0, help="measure each case at least this long")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"implementations to compare with (default: every one installed, of {','.join(PEERS)}); "
                        f"SpikingJelly: {INSTALL_SPIKINGJELLY}")
    p.add_argument("--quick", action="store_true", help="tiny model, batch 16, T=4: a smoke test")
    p.add_argument("--unfused", action="store_true", help="also measure the unfused LIF (plain autograd loop)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, help="also write the report (JSON) to this file after every measured case, so a "
                   "run cut short keeps what it measured")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # every implementation in full fp32, as the CLI runs: with TF32 convolutions (PyTorch's default on CUDA) two
    # implementations that lay out their convolutions differently round differently and their spikes part
    strict_fp32()
    if args._one:
        spec = json.loads(args._one)
        res = measure(spec["impl"], spec["mode"], spec["arch"], spec["num_steps"], spec["batch"],
                      torch.device(spec["device"]), spec["min_seconds"])
        print(json.dumps(res))
        return res
    if args.quick:
        args.channels, args.hidden, args.batch_size, args.steps, args.min_seconds = "4,8", "16", 16, "4", 0.2
    peers = [s for s in args.peers.split(",") if s]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        p.error(f"unknown peer(s) {', '.join(unknown)}; choose from {','.join(PEERS)}")
    device = torch.device(args.device)
    steps = [int(s) for s in args.steps.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    arch = _arch_args(args)
    skipped = {name: note for name in peers for note in [peer_note(name, arch, device)] if note}
    peers = [name for name in peers if name not in skipped]
    for note in skipped.values():  # one line each; stdout stays pure JSON with --json
        print(note, file=sys.stderr if args.json else sys.stdout, flush=True)
    report: Dict[str, Any] = {
        "device": str(device), "threads": torch.get_num_threads(), "torch": str(torch.__version__),
        "arch": arch, "batch": args.batch_size, "matmul_gflops": matmul_gflops(device),
        "peers": peers, "skipped_peers": skipped, "max_logit_diff": {}, "logit_agreement": {}, "cases": [],
    }
    if "spikingjelly" in peers:
        report["spikingjelly"] = {"version": spikingjelly_version(), "lif_backend": spikingjelly_backend(device)}
    rate_at_start = report["matmul_gflops"]
    def checked(what: str, fn):
        """``fn()``, or None with the failure in ``report["errors"]``: one failed check or peer must not
        lose a device run's other measurements (a run on a lent GPU cannot simply be repeated)."""
        try:
            return fn()
        except (AssertionError, RuntimeError) as e:
            report.setdefault("errors", []).append(f"{what}: {e}"[-2000:])
            print(f"{what} failed: {str(e).splitlines()[-1] if str(e) else type(e).__name__}", file=sys.stderr, flush=True)
            return None

    for T in steps:
        if "snntorch" in peers:
            report["max_logit_diff"][str(T)] = checked(f"logits vs snnTorch T={T}", lambda: check_same_logits(arch, T, device))
        for name in peers:
            report["logit_agreement"].setdefault(name, {})[str(T)] = checked(
                f"agreement with {name} T={T}", lambda: peer_agreement(name, arch, T, device))
        for mode in modes:
            ours = run_isolated(args, "ours", mode, T)
            unfused = run_isolated(args, "ours-unfused", mode, T) if args.unfused else None
            graphed = None
            if device.type == "cuda" and mode != "train":
                graphed = checked(f"ours-graphed {mode} T={T}", lambda: run_isolated(args, "ours-graphed", mode, T))
            case: Dict[str, Any] = {"mode": mode, "num_steps": T, "ours": ours, "ours_unfused": unfused,
                                    "ours_graphed": graphed, "peers": {}}
            for name in peers:
                res = checked(f"{name} {mode} T={T}", lambda: run_isolated(args, name, mode, T))
                if res is None:
                    continue
                case["peers"][name] = {**res, "speedup": ours["img_per_s"] / res["img_per_s"],
                                       "graphed_speedup": graphed["img_per_s"] / res["img_per_s"] if graphed else None,
                                       "memory_ratio": (ours["peak_mb"] / res["peak_mb"]) if res["peak_mb"] > 0 else None}
            # the snnTorch loop under its former keys, for existing readers
            snn_loop = case["peers"].get("snntorch")
            case["baseline"] = {k: v for k, v in snn_loop.items() if k not in ("speedup", "graphed_speedup", "memory_ratio")} if snn_loop else None
            case["speedup"] = snn_loop["speedup"] if snn_loop else None
            case["memory_ratio"] = snn_loop["memory_ratio"] if snn_loop else None
            report["cases"].append(case)
            if args.out:
                _write_report(args.out, report)
    # The rate is measured again at the end and the higher one kept: a shared CPU's slow moment at the
    # start would otherwise understate it and inflate "% of matmul".
    report["matmul_gflops_start_end"] = [rate_at_start, matmul_gflops(device)]
    report["matmul_gflops"] = max(report["matmul_gflops_start_end"])
    for c in report["cases"]:
        c["ours_fraction_of_matmul"] = c["ours"]["gflops"] / report["matmul_gflops"]
    report["complete"] = True
    if args.out:
        _write_report(args.out, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return report


def _write_report(path: str, report: Dict[str, Any]) -> None:
    """The report so far, written atomically (``complete`` is set once every case is measured)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"complete": False, **report}, f, indent=2)
    os.replace(tmp, path)


def print_table(report: Dict[str, Any]) -> None:
    peers = report["peers"]
    print(f"device {report['device']} ({report['threads']} threads), torch {report['torch']}, "
          f"fp32 matmul {report['matmul_gflops']:.1f} GFLOP/s, batch {report['batch']}, arch {report['arch']}")
    if "spikingjelly" in report:
        sj = report["spikingjelly"]
        print(f"SJ = SpikingJelly {sj['version']} multi-step LIFNode, LIF kernel: {sj['lif_backend']}")
    head = f"{'mode':<7}{'T':>4}{'ours img/s':>12}{'unfused':>9}{'graphed':>9}"
    for name in peers:
        head += f"{PEER_LABELS[name] + ' img/s':>16}{'speedup':>9}{'graphed':>9}"
    head += f"{'ours GFLOP/s':>14}{'% matmul':>10}{'ours MB':>9}" + "".join(f"{PEER_LABELS[n] + ' MB':>13}" for n in peers)
    print(head)
    for c in report["cases"]:
        unf = f"{c['ours_unfused']['img_per_s']:>9.1f}" if c["ours_unfused"] else f"{'-':>9}"
        gr = f"{c['ours_graphed']['img_per_s']:>9.1f}" if c.get("ours_graphed") else f"{'-':>9}"
        line = f"{c['mode']:<7}{c['num_steps']:>4}{c['ours']['img_per_s']:>12.1f}{unf}{gr}"
        for name in peers:
            r = c["peers"].get(name)
            if r is None:  # its measurement failed (see the errors below)
                line += f"{'failed':>16}{'-':>9}{'-':>9}"
                continue
            gx = f"{r['graphed_speedup']:>8.2f}x" if r.get("graphed_speedup") else f"{'-':>9}"
            line += f"{r['img_per_s']:>16.1f}{r['speedup']:>8.2f}x{gx}"
        line += f"{c['ours']['gflops']:>14.1f}{100 * c['ours_fraction_of_matmul']:>9.1f}%{c['ours']['peak_mb']:>9.0f}"
        line += "".join(f"{c['peers'][n]['peak_mb']:>13.0f}" if n in c["peers"] else f"{'-':>13}" for n in peers)
        print(line)
    if report["max_logit_diff"]:
        print("logits identical to the step-by-step snnTorch loop (max |diff|): "
              + ", ".join(f"T={k}: {v:.1e}" if v is not None else f"T={k}: FAILED"
                          for k, v in report["max_logit_diff"].items()))
    if "spikingjelly" in report["logit_agreement"]:
        print("SpikingJelly's logits equal robust-snn's on "
              + ", ".join(f"{100 * v:.1f}% (T={k})" if v is not None else f"FAILED (T={k})"
                          for k, v in report["logit_agreement"]["spikingjelly"].items())
              + " of samples (ties differ: it fires at H >= threshold, snnTorch at mem > threshold)")
    for err in report.get("errors", []):
        print(f"error: {err.splitlines()[0]}")


if __name__ == "__main__":
    main()
