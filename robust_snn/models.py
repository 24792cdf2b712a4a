"""The model contract (:class:`SpikingClassifier`) and the model zoo.

``SpikingClassifier.forward(x)`` takes images ``[B, C, H, W]`` in [0, 1] (or, when the
config says ``input = "events"``, ready spike/event tensors ``[B, T, P, H, W]`` fed to the
first layer as they are) and returns logits ``[B, K]`` (output spike counts by default),
starting from reset neuron state on every call, normalizing images inside the model. Any PyTorch
tool, torchattacks included, can attack it unchanged.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .encoders import Encoder, make_encoder
from .errors import RobustSNNError
from .neurons import NEURONS, RESET_MECHANISMS, SpikingNeuron, make_neuron
from .surrogates import canonical

ARCHITECTURES = ("csnn", "csnn-deep", "fcsnn", "scnn")
READOUTS = ("count", "membrane")
INPUT_KINDS = ("image", "events")

#: Defaults for every config key; a checkpoint stores the full, filled-in config.
DEFAULT_CONFIG: Dict[str, Any] = {
    "arch": "csnn",
    "in_channels": 1,
    "image_size": [28, 28],
    "num_classes": 10,
    "classes": [str(i) for i in range(10)],
    "dataset": "mnist",
    "channels": None,  # arch default
    "hidden": None,  # arch default
    "beta": 0.5,
    "threshold": 1.0,
    "reset_mechanism": "subtract",
    "neuron": "lif",
    "alpha": 0.9,  # synaptic-current decay (synaptic) or threshold-adaptation decay (alif)
    "adapt": 0.2,  # threshold step per spike (alif)
    "surrogate": "fast_sigmoid:slope=25",
    "encoding": "direct",
    "input": "image",  # "image": [B, C, H, W] in [0, 1], encoded inside; "events": [B, T, P, H, W] spike/event tensors, fed as they are
    "num_steps": 8,
    "readout": "count",
    "dropout": None,  # arch default
    "mean": [0.1307],
    "std": [0.3081],
}

#: the most time steps a model simulates (memory grows linearly with T)
MAX_NUM_STEPS = 1024
#: pixel values may leave [0, 1] by this much (rounding in preprocessors) before input validation refuses them
INPUT_TOLERANCE = 1e-4


def check_num_steps(num_steps: Any, *, option: str = "num_steps (--num-steps)") -> int:
    """``num_steps`` as an int in [1, MAX_NUM_STEPS], or a one-line error."""
    try:
        t = int(num_steps)
    except (TypeError, ValueError):
        raise RobustSNNError(f"{option} must be an integer, got {num_steps!r}") from None
    if not 1 <= t <= MAX_NUM_STEPS or t != num_steps:
        raise RobustSNNError(f"{option} must be an integer in [1, {MAX_NUM_STEPS}], got {num_steps}")
    return t


ARCH_DEFAULTS = {
    "csnn": {"channels": [32, 64], "hidden": [512], "dropout": 0.0},
    # the N-MNIST seed's SpikingCNN: three conv + max-pool blocks with LIF neurons, an FC LIF layer, an LIF output layer
    "scnn": {"channels": [16, 32, 64], "hidden": [128], "dropout": 0.0},
    "csnn-deep": {"channels": [32, 64, 64, 128], "hidden": [256], "dropout": 0.2},
    "fcsnn": {"channels": [], "hidden": [512, 256], "dropout": 0.0},
}


def full_config(**overrides: Any) -> Dict[str, Any]:
    """Fill in defaults (including architecture widths) and validate a model config."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise RobustSNNError(f"unknown model config keys: {', '.join(sorted(unknown))}")
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg["arch"] not in ARCHITECTURES:
        raise RobustSNNError(f"unknown model {cfg['arch']!r}; choose one of: {', '.join(ARCHITECTURES)}")
    for key in ("channels", "hidden"):
        if cfg[key] is None:
            cfg[key] = list(ARCH_DEFAULTS[cfg["arch"]][key])
        cfg[key] = [int(v) for v in cfg[key]]
        if any(v < 1 for v in cfg[key]):
            raise RobustSNNError(f"{key} widths must be positive, got {cfg[key]}")
    if not cfg["hidden"]:
        raise RobustSNNError("at least one hidden fully connected layer is required (--hidden)")
    if cfg["dropout"] is None:
        cfg["dropout"] = ARCH_DEFAULTS[cfg["arch"]]["dropout"]
    cfg["dropout"] = float(cfg["dropout"])
    if cfg["reset_mechanism"] not in RESET_MECHANISMS:
        raise RobustSNNError(f"unknown reset mechanism {cfg['reset_mechanism']!r}; choose one of: {', '.join(RESET_MECHANISMS)}")
    if cfg["arch"] == "csnn" and len(cfg["channels"]) != 2:
        raise RobustSNNError("csnn takes exactly 2 channel widths, e.g. --channels 32,64")
    if cfg["arch"] == "scnn" and len(cfg["channels"]) != 3:
        raise RobustSNNError("scnn takes exactly 3 channel widths, e.g. --channels 16,32,64")
    if cfg["arch"] == "csnn-deep" and len(cfg["channels"]) != 4:
        raise RobustSNNError("csnn-deep takes exactly 4 channel widths, e.g. --channels 32,64,64,128")
    if cfg["readout"] not in READOUTS:
        raise RobustSNNError(f"unknown readout {cfg['readout']!r}; choose one of: {', '.join(READOUTS)}")
    if not 0.0 <= float(cfg["beta"]) <= 1.0:
        raise RobustSNNError(f"beta must be in [0, 1], got {cfg['beta']}")
    if not 0 < float(cfg["threshold"]) < float("inf"):
        raise RobustSNNError(f"threshold must be a positive finite number, got {cfg['threshold']}")
    check_num_steps(cfg["num_steps"])
    NEURONS.get(cfg["neuron"])  # validates the name
    if not 0.0 <= float(cfg["alpha"]) <= 1.0:
        raise RobustSNNError(f"alpha must be in [0, 1], got {cfg['alpha']}")
    if not 0.0 <= float(cfg["adapt"]) < float("inf"):
        raise RobustSNNError(f"adapt must be a finite number >= 0, got {cfg['adapt']}")
    if not 0.0 <= float(cfg["dropout"]) < 1.0:
        raise RobustSNNError(f"dropout must be in [0, 1), got {cfg['dropout']}")
    make_encoder(cfg["encoding"])  # validates the name
    if cfg["input"] not in INPUT_KINDS:
        raise RobustSNNError(f"unknown input kind {cfg['input']!r}; choose one of: {', '.join(INPUT_KINDS)}")
    if cfg["input"] == "events" and cfg["encoding"] != "direct":
        raise RobustSNNError("an event-input model takes ready spike tensors: its encoding must be 'direct' (no encoder runs)")
    cfg["surrogate"] = canonical(cfg["surrogate"])
    if cfg["surrogate"] == "rate":
        raise RobustSNNError("'rate' is an attack gradient mode, not a training surrogate")
    cfg["image_size"] = [int(v) for v in cfg["image_size"]]
    cfg["num_classes"] = int(cfg["num_classes"])
    cfg["num_steps"] = int(cfg["num_steps"])
    if len(cfg["classes"]) != cfg["num_classes"]:
        cfg["classes"] = [str(i) for i in range(cfg["num_classes"])]
    return cfg


@dataclass
class Recording:
    """Per-layer traces from ``model(x, record=True)``.

    Attributes:
        names: layer names, input to output.
        spikes: list of ``[T, B, ...]`` spike trains, one per spiking layer.
        mems: list of ``[T, B, ...]`` membrane potentials, one per spiking layer.
        input_seq: ``[T, B, C, H, W]`` encoded input (for direct encoding the
            input current before the first layer, i.e. the normalized image).
    """

    names: List[str]
    spikes: List[torch.Tensor]
    mems: List[torch.Tensor]
    input_seq: torch.Tensor


class Stage(nn.Module):
    """Stateless layers followed by one spiking layer (named ``lif`` for every neuron type: checkpoint keys)."""

    def __init__(self, layers: Sequence[nn.Module], lif: SpikingNeuron) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.lif = lif


class SpikingClassifier(nn.Module):
    """A spiking classifier with the robust-snn contract.

    ``forward(x)`` takes images in [0, 1] and returns logits; every call
    starts from reset state. Simulation is layer by layer: stateless layers
    run once on ``[T*B, ...]``, only the LIF recurrence loops over time; with
    a static (direct) encoder the first stateless block runs once.

    Args:
        config: a model config (see :func:`full_config`).

    Shape:
        - Input: ``[B, C, H, W]`` in [0, 1].
        - Output: ``[B, K]`` logits (output spike counts, or mean output
          membrane potential with ``readout="membrane"``).
    """

    def __init__(self, config: Dict[str, Any]) -> None:
        super().__init__()
        self.config = full_config(**config)
        cfg = self.config
        self.num_steps = cfg["num_steps"]
        self.readout = cfg["readout"]
        self.encoder: Encoder = make_encoder(cfg["encoding"])
        c = cfg["in_channels"]
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, -1, 1, 1))
        if self.mean.numel() not in (1, c) or self.std.numel() not in (1, c):
            raise RobustSNNError("mean/std must have 1 or in_channels entries")
        self.stages = nn.ModuleList(_build_stages(cfg))
        self.stage_names = [name for name, _ in _stage_plan(cfg)]
        self._has_conv = any(isinstance(m, nn.Conv2d) for m in self.modules())
        #: refuse images outside [0, 1] or non-finite (see :meth:`_check_input`, :func:`unchecked_inputs`)
        self.check_inputs = True
        #: run convolutions in channels-last layout (see :meth:`set_fast`)
        self.channels_last = True
        self._conv_weight_layout()

    # -- helpers -------------------------------------------------------------------------
    @property
    def lif_layers(self) -> List[SpikingNeuron]:
        """All spiking layers (LIF, ALIF, Synaptic, ...), input to output."""
        return [m for m in self.modules() if isinstance(m, SpikingNeuron)]

    def reset_state(self) -> None:
        """Clear the state of every spiking layer (walks ``self.modules()``)."""
        for m in self.modules():
            if isinstance(m, SpikingNeuron):
                m.reset()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalization for direct encoding (rate/latency encode the raw [0, 1] image)."""
        if self.encoder.static:
            return (x - self.mean) / self.std
        return x

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last images for convolutional models (faster convolutions and pooling; same values)."""
        if self.channels_last and self._has_conv and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _stateless(self, stage: Stage, h: torch.Tensor) -> torch.Tensor:
        """A stage's stateless layers; convolution outputs go channels-last (when enabled)."""
        h = self._layout(h)
        for layer in stage.layers:
            h = layer(h)
            if isinstance(layer, nn.Conv2d):
                h = self._layout(h)
        return h

    def set_fast(self, enabled: bool) -> "SpikingClassifier":
        """Switch every fast path (fused LIF, channels-last) on or off; off is the plain reference path."""
        self.channels_last = bool(enabled)
        self._conv_weight_layout()
        for m in self.lif_layers:
            m.fused = bool(enabled)
        return self

    def _conv_weight_layout(self) -> None:
        """Convolution weights in the activations' layout, so forward and backward never mix layouts."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.data = m.weight.data.contiguous(memory_format=fmt)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate images (shape, dtype, finite, in [0, 1]); returns them in the model's dtype.

        A uint8 image, pixel values in [0, 255], a normalized image or NaN pixels would
        otherwise give a silently wrong answer. The range check is one fused reduction;
        :func:`unchecked_inputs` switches it off for callers that feed noise on purpose
        (randomized smoothing, noise augmentation).
        """
        cfg = self.config
        if self.events:
            return self._check_events(x)
        expected = (cfg["in_channels"], *cfg["image_size"])
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            hint = "; this model takes images (its config has input = 'image')" if x.dim() == 5 else ""
            raise RobustSNNError(f"expected input of shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}{hint}")
        if not x.is_floating_point():
            hint = "convert with x.float() / 255" if x.dtype == torch.uint8 else "convert to float images in [0, 1]"
            raise RobustSNNError(f"expected float images in [0, 1], got dtype {x.dtype}; {hint}")
        if self.check_inputs and x.numel() and not _capturing(x):
            tol = INPUT_TOLERANCE
            if not bool(((x >= -tol) & (x <= 1 + tol)).all()):  # NaN fails both comparisons
                if not bool(torch.isfinite(x).all()):
                    raise RobustSNNError("input images contain NaN or inf values; drop or repair those images")
                lo, hi = float(x.min()), float(x.max())
                hint = ("divide by 255" if lo >= 0 and hi <= 255 else
                        "pass raw [0, 1] images: the model normalizes inside (undo your normalization), or clip to [0, 1]")
                raise RobustSNNError(f"input pixel values must be in [0, 1], got min {lo:.4g}, max {hi:.4g}; {hint}")
        return x if x.dtype == self.mean.dtype else x.to(self.mean.dtype)

    def _check_events(self, x: torch.Tensor) -> torch.Tensor:
        """Validate event tensors ``[B, T, P, H, W]`` (finite, non-negative counts); returns them as floats."""
        cfg = self.config
        expected = (cfg["in_channels"], *cfg["image_size"])
        if x.dim() != 5 or tuple(x.shape[2:]) != expected:
            raise RobustSNNError(f"expected event tensors of shape [B, T, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if self.check_inputs and x.numel() and not _capturing(x):
            if not bool(((x >= 0) & (x < float("inf"))).all()):  # NaN fails both comparisons
                raise RobustSNNError("event tensors must hold finite, non-negative event counts (NaN, inf or negative values found)")
        return x if x.dtype == self.mean.dtype else x.to(self.mean.dtype)  # bool or integer event counts are fine as they are

    @property
    def events(self) -> bool:
        """True if the model takes ready event tensors ``[B, T, P, H, W]`` instead of images."""
        return self.config["input"] == "events"

    # -- simulation ----------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, *, num_steps: Optional[int] = None, record: bool = False
    ) -> torch.Tensor | Tuple[torch.Tensor, Recording]:
        """Simulate ``num_steps`` steps (default: the model's) and read out logits.

        With ``record=True`` returns ``(logits, Recording)``.
        """
        x = self._check_input(x)
        self.reset_state()
        if self.events:  # the input brings its own time axis
            if num_steps is not None and int(num_steps) != x.shape[1]:
                raise RobustSNNError(f"num_steps={num_steps} does not match the event tensors' {x.shape[1]} time bins")
            x_seq = x.transpose(0, 1)  # [T, B, P, H, W]
            T = check_num_steps(x_seq.shape[0], option="the event tensors' time bins")
        else:
            T = check_num_steps(self.num_steps if num_steps is None else num_steps)
        B = x.shape[0]
        x = x if self.events else self.preprocess(x)
        spikes, mems = [], []
        for m in self.lif_layers:
            m.record = record
        self.stages[-1].lif.record = record or self.readout == "membrane"  # membrane readout needs its trace
        try:
            first = self.stages[0]
            if self.encoder.static and not self.events:
                cur = self._stateless(first, x)  # computed once, broadcast over time
                spk_seq = first.lif.forward_static(cur, T)
                input_seq = x.unsqueeze(0).expand(T, *x.shape)
            else:  # a sequence: ready event tensors, or the encoder's spikes
                input_seq = x_seq if self.events else self.encoder(x, T)
                cur = self._stateless(first, input_seq.reshape(T * B, *input_seq.shape[2:]))
                spk_seq = first.lif(cur.view(T, B, *cur.shape[1:]))
            spikes.append(spk_seq)
            mems.append(first.lif.last_mem)
            for stage in self.stages[1:]:
                cur = self._stateless(stage, spk_seq.reshape(T * B, *spk_seq.shape[2:]))
                spk_seq = stage.lif(cur.view(T, B, *cur.shape[1:]))
                spikes.append(spk_seq)
                mems.append(stage.lif.last_mem)
        finally:
            for m in self.lif_layers:
                m.record = False
        last_mem = self.stages[-1].lif.last_mem
        if self.readout == "count":
            logits = spk_seq.sum(0)
        else:
            logits = last_mem.mean(0)
        if record:
            return logits, Recording(list(self.stage_names), spikes, mems, input_seq)
        return logits

    def output_spikes(self, x: torch.Tensor, *, num_steps: Optional[int] = None) -> torch.Tensor:
        """Output spike trains ``[T, B, K]``."""
        _, rec = self.forward(x, num_steps=num_steps, record=True)
        return rec.spikes[-1]

    def extra_repr(self) -> str:
        c = self.config
        return f"arch={c['arch']}, encoding={c['encoding']}, num_steps={c['num_steps']}, readout={c['readout']}"


def _capturing(x: torch.Tensor) -> bool:
    """True while a CUDA graph is being captured (no host sync allowed then)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def unchecked_inputs(*models: nn.Module) -> Iterator[None]:
    """Let ``models`` accept inputs outside [0, 1] inside the block (Gaussian noise on purpose).

    Randomized smoothing (Cohen et al. 2019) classifies ``x + N(0, sigma^2)`` without
    clipping; everything else should pass images in [0, 1].
    """
    mods = [m for model in models for m in model.modules() if isinstance(m, SpikingClassifier)]
    old = [m.check_inputs for m in mods]
    for m in mods:
        m.check_inputs = False
    try:
        yield
    finally:
        for m, o in zip(mods, old):
            m.check_inputs = o


def _stage_plan(cfg: Dict[str, Any]) -> List[Tuple[str, List[nn.Module]]]:
    """(name, stateless layers) per stage; each stage ends in a spiking layer."""
    c_in = cfg["in_channels"]
    h, w = cfg["image_size"]
    k = cfg["num_classes"]
    p = float(cfg["dropout"])
    plan: List[Tuple[str, List[nn.Module]]] = []

    def drop() -> List[nn.Module]:
        return [nn.Dropout(p)] if p > 0 else []

    if cfg["arch"] == "csnn":
        c1, c2 = cfg["channels"]
        plan.append(("conv1", [nn.Conv2d(c_in, c1, 3, padding=1), nn.MaxPool2d(2)]))
        plan.append(("conv2", [nn.Conv2d(c1, c2, 3, padding=1), nn.MaxPool2d(2)]))
        feat = c2 * (h // 4) * (w // 4)
    elif cfg["arch"] == "scnn":
        prev = c_in
        for i, ch in enumerate(cfg["channels"], start=1):
            plan.append((f"conv{i}", [nn.Conv2d(prev, ch, 3, padding=1), nn.MaxPool2d(2)]))
            prev, h, w = ch, h // 2, w // 2
        feat = prev * h * w
    elif cfg["arch"] == "csnn-deep":
        chans = cfg["channels"]
        strides = [1, 2, 1, 2]
        prev = c_in
        for i, (ch, s) in enumerate(zip(chans, strides), start=1):
            block: List[nn.Module] = [nn.Conv2d(prev, ch, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(ch)]
            plan.append((f"conv{i}", block + ([nn.Dropout2d(p)] if p > 0 and s == 2 else [])))
            prev = ch
            h, w = (h + 2 - 3) // s + 1, (w + 2 - 3) // s + 1
        feat = prev * h * w
    else:  # fcsnn
        feat = c_in * h * w
    prev = feat
    for i, width in enumerate(cfg["hidden"], start=1):
        pre: List[nn.Module] = [nn.Flatten()] if i == 1 else []
        plan.append((f"fc{i}", pre + ([nn.Dropout(p)] if p > 0 else []) + [nn.Linear(prev, width)]))
        prev = width
    plan.append(("output", drop() + [nn.Linear(prev, k)]))
    return plan


def _build_stages(cfg: Dict[str, Any]) -> List[Stage]:
    return [
        Stage(
            layers,
            make_neuron(
                cfg["neuron"],
                beta=float(cfg["beta"]),
                threshold=float(cfg["threshold"]),
                surrogate=cfg["surrogate"],
                reset_mechanism=cfg["reset_mechanism"],
                alpha=float(cfg["alpha"]),
                adapt=float(cfg["adapt"]),
            ),
        )
        for _, layers in _stage_plan(cfg)
    ]


def build_model(arch: str = "csnn", **config: Any) -> SpikingClassifier:
    """Build a fresh model of the zoo by name (``csnn``, ``csnn-deep``, ``fcsnn``)."""
    return SpikingClassifier(full_config(arch=arch, **config))
