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
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from .encoders import Encoder, make_encoder
from .errors import RobustSNNError
from .neurons import NEURONS, RESET_MECHANISMS, SpikingNeuron, make_neuron
from .surrogates import canonical

ARCHITECTURES = ("csnn", "csnn-deep", "fcsnn", "scnn", "sresnet")
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


#: per architecture: default widths and dropout; ``n_channels``/``n_hidden``: how many widths it takes (``None``: any)
ARCH_DEFAULTS = {
    "csnn": {"channels": [32, 64], "hidden": [512], "dropout": 0.0, "n_channels": 2, "n_hidden": None},
    # the N-MNIST seed's SpikingCNN: three conv + max-pool blocks with LIF neurons, an FC LIF layer, an LIF output layer
    "scnn": {"channels": [16, 32, 64], "hidden": [128], "dropout": 0.0, "n_channels": 3, "n_hidden": None},
    "csnn-deep": {"channels": [32, 64, 64, 128], "hidden": [256], "dropout": 0.2, "n_channels": 4, "n_hidden": None},
    "fcsnn": {"channels": [], "hidden": [512, 256], "dropout": 0.0, "n_channels": None, "n_hidden": None},
    # the N-MNIST seed's SpikingResNet: an ALIF convolution, two residual blocks of LIF neurons, a Synaptic FC layer,
    # an LIF output layer; widths: stem, block 1, block 2; hidden: the Synaptic layer
    "sresnet": {"channels": [16, 32, 64], "hidden": [128], "dropout": 0.0, "n_channels": 3, "n_hidden": 1},
}
#: architectures whose spiking layers are fixed by the design (config ``neuron`` must stay ``lif``, their LIF layers)
FIXED_NEURONS = {"sresnet": "ALIF stem, LIF residual blocks and output, a Synaptic hidden layer"}


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
    arch = ARCH_DEFAULTS[cfg["arch"]]
    if arch["n_channels"] is not None and len(cfg["channels"]) != arch["n_channels"]:
        raise RobustSNNError(f"{cfg['arch']} takes exactly {arch['n_channels']} channel widths, "
                             f"e.g. --channels {','.join(map(str, arch['channels']))}")
    if arch["n_hidden"] is not None and len(cfg["hidden"]) != arch["n_hidden"]:
        raise RobustSNNError(f"{cfg['arch']} takes exactly {arch['n_hidden']} hidden width(s), "
                             f"e.g. --hidden {','.join(map(str, arch['hidden']))}")
    if cfg["arch"] in FIXED_NEURONS and cfg["neuron"] != "lif":
        raise RobustSNNError(f"{cfg['arch']} fixes its neurons ({FIXED_NEURONS[cfg['arch']]}); leave --neuron at lif "
                             f"(--beta, --threshold, --alpha and --adapt still apply)")
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
    """Stateless layers followed by one spiking layer (named ``lif`` for every neuron type: checkpoint keys).

    A residual stage also has a ``shortcut`` (stateless layers) and ``skip``, the index of the
    stage whose *input* spikes feed it: its input current is
    ``layers(previous spikes) + shortcut(spikes entering stage skip)``, added before its
    spiking layer. Plain stages have ``shortcut = skip = None``.
    """

    def __init__(self, layers: Sequence[nn.Module], lif: SpikingNeuron, *, shortcut: Optional[Sequence[nn.Module]] = None,
                 skip: Optional[int] = None) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.lif = lif
        if (shortcut is None) != (skip is None):
            raise ValueError("a residual stage needs both a shortcut and the index of the stage it skips from")
        self.shortcut = None if shortcut is None else nn.Sequential(*shortcut)
        self.skip = skip


class SpikingClassifier(nn.Module):
    """A spiking classifier with the robust-snn contract.

    ``forward(x)`` takes images in [0, 1] and returns logits; every call
    starts from reset state. Simulation is layer by layer: stateless layers
    run once on ``[T*B, ...]``, only the LIF recurrence loops over time; with
    a static (direct) encoder the first stateless block runs once. A residual
    stage (:class:`Stage` with a ``shortcut``, ``sresnet``) adds its shortcut's
    current to its layers' output before its spiking layer.

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
        plan = _stage_plan(cfg)
        self.stages = nn.ModuleList(_build_stages(cfg, plan))
        self.stage_names = [st.name for st in plan]
        #: stages whose input spikes a later stage's shortcut adds (kept only until that stage runs)
        self._skip_sources = {st.skip for st in plan if st.skip is not None}
        if not all(0 < j < k for k, st in enumerate(plan) for j in [st.skip] if j is not None):
            raise ValueError("a shortcut must start at an earlier stage other than the first (whose input is the image)")
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

    def _stateless(self, layers: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        """Stateless layers (a stage's, or its shortcut) on ``[T*B, ...]``; convolution outputs go channels-last (when enabled)."""
        h = self._layout(h)
        for layer in layers:
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
                cur = self._stateless(first.layers, x)  # computed once, broadcast over time
                spk_seq = first.lif.forward_static(cur, T)
                input_seq = x.unsqueeze(0).expand(T, *x.shape)
            else:  # a sequence: ready event tensors, or the encoder's spikes
                input_seq = x_seq if self.events else self.encoder(x, T)
                cur = self._stateless(first.layers, input_seq.reshape(T * B, *input_seq.shape[2:]))
                spk_seq = first.lif(cur.view(T, B, *cur.shape[1:]))
            spikes.append(spk_seq)
            mems.append(first.lif.last_mem)
            inputs: Dict[int, torch.Tensor] = {}  # [T*B, ...] spikes entering the stages a shortcut starts from
            for k, stage in enumerate(self.stages[1:], start=1):
                h = spk_seq.reshape(T * B, *spk_seq.shape[2:])
                if k in self._skip_sources:
                    inputs[k] = h
                cur = self._stateless(stage.layers, h)
                if stage.shortcut is not None:  # residual: add the block input's current before the spiking layer
                    cur = cur + self._stateless(stage.shortcut, inputs.pop(stage.skip))
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


class PlannedStage(NamedTuple):
    """One stage of an architecture: stateless layers, then a spiking layer.

    Attributes:
        name: layer name (recordings, firing rates).
        layers: stateless layers, run on ``[T*B, ...]``.
        neuron: neuron type of its spiking layer (``None``: the config's ``neuron``).
        skip: residual stages: index of the stage whose input spikes feed ``shortcut``.
        shortcut: residual stages: stateless layers on those spikes, added to ``layers``' output.
    """

    name: str
    layers: List[nn.Module]
    neuron: Optional[str] = None
    skip: Optional[int] = None
    shortcut: Optional[List[nn.Module]] = None


#: a trunk builder: (config, in_channels, height, width) -> (stages, flattened feature size)
Trunk = Callable[[Dict[str, Any], int, int, int], Tuple[List[PlannedStage], int]]


def _csnn_trunk(cfg: Dict[str, Any], c_in: int, h: int, w: int) -> Tuple[List[PlannedStage], int]:
    c1, c2 = cfg["channels"]
    return [PlannedStage("conv1", [nn.Conv2d(c_in, c1, 3, padding=1), nn.MaxPool2d(2)]),
            PlannedStage("conv2", [nn.Conv2d(c1, c2, 3, padding=1), nn.MaxPool2d(2)])], c2 * (h // 4) * (w // 4)


def _scnn_trunk(cfg: Dict[str, Any], c_in: int, h: int, w: int) -> Tuple[List[PlannedStage], int]:
    plan, prev = [], c_in
    for i, ch in enumerate(cfg["channels"], start=1):
        plan.append(PlannedStage(f"conv{i}", [nn.Conv2d(prev, ch, 3, padding=1), nn.MaxPool2d(2)]))
        prev, h, w = ch, h // 2, w // 2
    return plan, prev * h * w


def _csnn_deep_trunk(cfg: Dict[str, Any], c_in: int, h: int, w: int) -> Tuple[List[PlannedStage], int]:
    p = float(cfg["dropout"])
    plan, prev = [], c_in
    for i, (ch, s) in enumerate(zip(cfg["channels"], [1, 2, 1, 2]), start=1):
        block: List[nn.Module] = [nn.Conv2d(prev, ch, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(ch)]
        plan.append(PlannedStage(f"conv{i}", block + ([nn.Dropout2d(p)] if p > 0 and s == 2 else [])))
        prev = ch
        h, w = (h + 2 - 3) // s + 1, (w + 2 - 3) // s + 1
    return plan, prev * h * w


def _fcsnn_trunk(cfg: Dict[str, Any], c_in: int, h: int, w: int) -> Tuple[List[PlannedStage], int]:
    return [], c_in * h * w


def _sresnet_trunk(cfg: Dict[str, Any], c_in: int, h: int, w: int) -> Tuple[List[PlannedStage], int]:
    """The N-MNIST seed's SpikingResNet trunk: an ALIF convolution, then two residual blocks of LIF neurons.

    - ``conv1``: 3×3 convolution, batch norm, 2×2 max pooling, **ALIF** neurons (adaptive threshold);
    - ``blockN.conv1``: 3×3 convolution with stride 2, batch norm, LIF neurons;
    - ``blockN.conv2``: 3×3 convolution, batch norm, **plus the shortcut** (1×1 convolution with
      stride 2 and batch norm on the spikes entering the block), LIF neurons.

    The skip connection adds **currents**: the shortcut's output is added to the second
    convolution's output before the block's second LIF layer, as in the usual snnTorch residual
    block (``out = bn2(conv2(spk1)) + shortcut(x); spk2 = lif2(out)``) and Hu et al.'s Spiking
    ResNet (https://arxiv.org/abs/1805.01352); SEW-ResNet (Fang et al. 2021) adds spikes after the
    neuron instead. The seed's README names the layers but not where the sum happens; its code
    is not available here. 34×34 events: 17×17 after ``conv1``, 9×9 after block 1, 5×5 after block 2.
    """
    c1, c2, c3 = cfg["channels"]
    plan = [PlannedStage("conv1", [nn.Conv2d(c_in, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.MaxPool2d(2)],
                         neuron="alif")]
    h, w, prev = h // 2, w // 2, c1
    for b, ch in enumerate((c2, c3), start=1):
        first = len(plan)  # the block's input spikes enter this stage
        plan.append(PlannedStage(f"block{b}.conv1", [nn.Conv2d(prev, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch)],
                                 neuron="lif"))
        plan.append(PlannedStage(f"block{b}.conv2", [nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch)],
                                 neuron="lif", skip=first,
                                 shortcut=[nn.Conv2d(prev, ch, 1, stride=2, bias=False), nn.BatchNorm2d(ch)]))
        prev, h, w = ch, (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return plan, prev * h * w


#: the zoo as data: architecture -> (trunk builder, neuron type of the hidden FC layers (``None``: the config's))
ARCH_PLANS: Dict[str, Tuple[Trunk, Optional[str]]] = {
    "csnn": (_csnn_trunk, None),
    "csnn-deep": (_csnn_deep_trunk, None),
    "fcsnn": (_fcsnn_trunk, None),
    "scnn": (_scnn_trunk, None),
    "sresnet": (_sresnet_trunk, "synaptic"),  # the seed's Synaptic layer
}


def _stage_plan(cfg: Dict[str, Any]) -> List[PlannedStage]:
    """The stages of ``cfg``'s architecture: its trunk, the hidden FC layers, the output layer."""
    h, w = cfg["image_size"]
    p = float(cfg["dropout"])
    trunk, hidden_neuron = ARCH_PLANS[cfg["arch"]]
    plan, prev = trunk(cfg, cfg["in_channels"], h, w)
    drop: List[nn.Module] = [nn.Dropout(p)] if p > 0 else []
    for i, width in enumerate(cfg["hidden"], start=1):
        pre: List[nn.Module] = [nn.Flatten()] if i == 1 else []
        plan.append(PlannedStage(f"fc{i}", pre + ([nn.Dropout(p)] if p > 0 else []) + [nn.Linear(prev, width)], neuron=hidden_neuron))
        prev = width
    plan.append(PlannedStage("output", drop + [nn.Linear(prev, cfg["num_classes"])],
                             neuron="lif" if cfg["arch"] in FIXED_NEURONS else None))
    return plan


def _build_stages(cfg: Dict[str, Any], plan: List[PlannedStage]) -> List[Stage]:
    params = dict(beta=float(cfg["beta"]), threshold=float(cfg["threshold"]), surrogate=cfg["surrogate"],
                  reset_mechanism=cfg["reset_mechanism"], alpha=float(cfg["alpha"]), adapt=float(cfg["adapt"]))
    return [Stage(st.layers, make_neuron(st.neuron or cfg["neuron"], **params), shortcut=st.shortcut, skip=st.skip) for st in plan]


def build_model(arch: str = "csnn", **config: Any) -> SpikingClassifier:
    """Build a fresh model of the zoo by name (one of :data:`ARCHITECTURES`)."""
    return SpikingClassifier(full_config(arch=arch, **config))
