"""CUDA-graph replay of a spiking classifier's forward pass and input gradient, for attacks.

An attack step at attack-sized batches is launch-bound on a GPU: a CSNN's forward and
backward are a few dozen small kernels (the fused LIF is one launch per layer), each
costing microseconds of CPU time to launch. :class:`GraphedClassifier` records them once
per input shape as CUDA graphs (``torch.cuda.CUDAGraph``) and replays them, so one attack
step costs two graph launches. It pads every batch up to a bucket size
(:func:`bucket_size`: 1, 2, 3, 4, 6, 8, 12, 16, 24, ...), so the shrinking survivor sets of
the standard suite reuse a handful of graphs; samples are independent in eval mode, so the
padding rows change nothing.

Why not ``torch.cuda.make_graphed_callables``: it differentiates every parameter that
requires grad (an attack needs only the input gradient) and returns views of its static
buffers, which the next replay overwrites under an attack that keeps last step's logits or
gradient. Why not ``torch.compile(mode="reduce-overhead")``: the fused Triton LIF is a custom
autograd function with a hand-written backward, which it would trace around with graph breaks.

Safety (the replay must compute exactly what the model computes):

- graphs are used only for deterministic models (direct encoding or event input) in eval
  mode, without ``record``; everything else runs the model itself;
- a graph is keyed by the padded batch, the input's shape and dtype, whether it computes the
  input gradient, every spiking layer's gradient (surrogate name and parameters, rate
  mode), its fast-path switches, the readout, the values of the LIF constants (beta and
  threshold, which the graph holds as numbers), and the storage of every parameter and
  buffer (a replaced weight tensor gets a new graph; in-place weight updates are read by
  the replay);
- outputs and gradients are copies, never the static buffers;
- a backward whose forward buffers were overwritten by a later replay of the same graph
  raises instead of returning another input's gradient.

Same kernels in the same order as the model's own forward and backward; only a padded batch
can differ, where the math libraries pick other kernels for the larger batch (on CPU a linear
layer's rows differ by about 1e-6 between batch 7 and 8; on the H100 a batch of 200 padded to 256
gave identical logits and gradients): rounding that can move a membrane potential sitting at the
threshold, as any change of batch size can. ``benchmarks/gpu_numerics.py`` measures it on a GPU.
"""
from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from typing import Any, Dict, Hashable, Optional, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .encoders import is_stochastic
from .models import SpikingClassifier
from .neurons import SpikingNeuron

log = logging.getLogger(__name__)

#: captured graphs kept per wrapped model (least recently used dropped first)
DEFAULT_MAX_GRAPHS = 24
WARMUP_CALLS = 2


def bucket_size(n: int) -> int:
    """The padded batch for ``n`` samples: the smallest of 1, 2, 3, 4, 6, 8, 12, ... (2^k and 3·2^k) >= ``n``.

    At most 1.5x the work of ``n`` (33 % wasted rows) and about two graphs per doubling.
    """
    if n < 1:
        raise ValueError(f"batch of {n} samples")
    p = 1
    while p < n:
        p *= 2
    three = 3 * p // 4  # 3 * 2^(k-2): between p/2 and p
    return three if p >= 4 and three >= n else p


def _spike_fn_key(fn: Any) -> Hashable:
    """What a spike function computes: its surrogate's name and parameters (a fresh object per
    :func:`~robust_snn.neurons.use_surrogate` must reuse the graph), else the object itself."""
    name = getattr(fn, "surrogate_name", None)
    if name is None:
        return ("object", fn)  # the object, not its id: an id can be reused once the object is gone
    params = getattr(fn, "surrogate_params", {}) or {}
    return (name, tuple(sorted((k, repr(v)) for k, v in params.items())))


class _Capture:
    """Static buffers of one input shape and the work that fills them; :meth:`replay_forward` then
    :meth:`replay_backward` (if ``grad``). ``generation`` counts forward replays."""

    def __init__(self, model: nn.Module, like: torch.Tensor, batch: int, *, grad: bool) -> None:
        self.grad = grad
        self.generation = 0
        self.x = torch.zeros((batch, *like.shape[1:]), dtype=like.dtype, device=like.device)
        if grad:
            self.x.requires_grad_(True)
        self.out: torch.Tensor
        self.g_out: Optional[torch.Tensor] = None
        self.g_x: Optional[torch.Tensor] = None

    def load(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.x[: x.shape[0]].copy_(x)

    def replay_forward(self) -> None:
        raise NotImplementedError

    def replay_backward(self) -> None:
        raise NotImplementedError


class CudaGraphCapture(_Capture):
    """The forward (and, with ``grad``, the input-gradient backward) recorded as CUDA graphs sharing one memory pool."""

    def __init__(self, model: nn.Module, like: torch.Tensor, batch: int, *, grad: bool) -> None:
        super().__init__(model, like, batch, grad=grad)
        device = like.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.set_grad_enabled(grad):
            for _ in range(WARMUP_CALLS):  # compiles kernels and settles the allocator outside the capture
                out = model(self.x)
                if grad:
                    torch.autograd.grad(out, self.x, torch.ones_like(out))
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self.fwd = torch.cuda.CUDAGraph()
        with torch.set_grad_enabled(grad), torch.cuda.graph(self.fwd):
            self.out = model(self.x)
        if grad:
            self.g_out = torch.zeros_like(self.out)
            self.bwd = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.bwd, pool=self.fwd.pool()):
                # retain_graph: the saved activations stay allocated, so their memory is not reused later in this
                # capture, and a second backward of one forward (DeepFool's one gradient per class) reads them intact
                (self.g_x,) = torch.autograd.grad(self.out, self.x, self.g_out, retain_graph=True)

    def replay_forward(self) -> None:
        self.fwd.replay()
        self.generation += 1

    def replay_backward(self) -> None:
        self.bwd.replay()


class EagerCapture(_Capture):
    """The same static-buffer contract computed by calling the model: the CPU reference of
    :class:`CudaGraphCapture`, so the wrapper's padding, keys and checks are tested without a GPU."""

    def __init__(self, model: nn.Module, like: torch.Tensor, batch: int, *, grad: bool) -> None:
        super().__init__(model, like, batch, grad=grad)
        self.model = model
        with torch.set_grad_enabled(grad):
            self._live = model(self.x)
        self.out = self._live.detach().clone()
        if grad:
            self.g_out = torch.zeros_like(self.out)
            self.g_x = torch.zeros_like(self.x)

    def replay_forward(self) -> None:
        with torch.set_grad_enabled(self.grad):
            self._live = self.model(self.x)
        with torch.no_grad():
            self.out.copy_(self._live)
        self.generation += 1

    def replay_backward(self) -> None:
        (g,) = torch.autograd.grad(self._live, self.x, self.g_out, retain_graph=True)
        with torch.no_grad():
            self.g_x.copy_(g)


CAPTURES = {"cuda": CudaGraphCapture, "eager": EagerCapture}


class _Replay(torch.autograd.Function):
    """``x -> logits`` by replaying a capture; backward: the captured input gradient."""

    @staticmethod
    def forward(ctx, x, cap):  # type: ignore[override]
        n = x.shape[0]
        cap.load(x)
        cap.replay_forward()
        ctx.cap, ctx.n, ctx.generation = cap, n, cap.generation
        return cap.out[:n].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):  # type: ignore[override]
        cap = ctx.cap
        if cap.generation != ctx.generation:
            raise RuntimeError("the graphed model was called again with the same input shape before this backward: its "
                               "saved activations were overwritten; differentiate each output before the next call "
                               "(or run the model without GraphedClassifier)")
        with torch.no_grad():
            cap.g_out.zero_()
            cap.g_out[: ctx.n].copy_(g_out)
        cap.replay_backward()
        return cap.g_x[: ctx.n].clone(), None


class GraphedClassifier(nn.Module):
    """A :class:`~robust_snn.models.SpikingClassifier` whose forward and input gradient replay CUDA graphs.

    Same results as ``model`` (see the module's notes on padding); what the graphs do not cover (CPU tensors,
    training mode, a stochastic encoder, a model that is not a bare SpikingClassifier, keyword arguments such as ``record``, parameter
    gradients) run ``model`` itself. Attributes other than its own are the model's.
    Only the input gradient is computed: parameters get no ``.grad`` through it, and forward hooks
    on the model's layers run at capture only (a replay runs kernels, not Python).

    Args:
        model: the classifier (``eval()`` mode to be graphed).
        max_graphs: captured shapes kept (least recently used dropped first); each holds the
            activations of one padded batch.
        backend: ``"cuda"`` (CUDA graphs, CUDA inputs only) or ``"eager"`` (the same buffer
            contract computed eagerly on any device: the reference the tests use).

    Shape: ``[B, ...]`` -> ``[B, K]``, as ``model``.
    """

    def __init__(self, model: nn.Module, *, max_graphs: int = DEFAULT_MAX_GRAPHS, backend: str = "cuda") -> None:
        super().__init__()
        if backend not in CAPTURES:
            raise ValueError(f"unknown graph backend {backend!r}; choose from {', '.join(CAPTURES)}")
        self.model = model
        self.backend = backend
        self.max_graphs = int(max_graphs)
        self._captures: "OrderedDict[Hashable, _Capture]" = OrderedDict()
        #: how calls were served: ``captures`` (new graphs), ``replays``, ``eager`` (the model itself),
        #: ``failed`` (captures that raised: those shapes run the model itself)
        self.stats: Dict[str, int] = {"captures": 0, "replays": 0, "eager": 0, "failed": 0}
        self._failed: set = set()
        # the model's mode, not nn.Module's default (training): torchattacks restores the mode it finds on the
        # wrapper after every call, and a wrapper in training mode would switch the model to training
        self.train(model.training)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def clear(self) -> None:
        """Drop every captured graph (and its memory)."""
        self._captures.clear()

    def _graphable(self, x: torch.Tensor, kwargs: Dict[str, Any]) -> Optional[bool]:
        """None: run the model itself; else whether the graph must compute the input gradient."""
        m = self.model
        if not isinstance(m, SpikingClassifier):  # a defended model's preprocessors may draw noise: run it as it is
            return None
        if kwargs or m.training or is_stochastic(m) or x.dim() == 0 or x.shape[0] == 0 or not x.is_floating_point():
            return None
        if self.backend == "cuda" and not x.is_cuda:
            return None
        if not torch.is_grad_enabled():
            return False
        if x.requires_grad:
            return True
        # grad mode without an input gradient: eager keeps the parameters' graph (a caller may want it)
        return False if not any(p.requires_grad for p in m.parameters()) else None

    def _key(self, x: torch.Tensor, grad: bool) -> Tuple[Hashable, ...]:
        m = self.model
        neurons = [l for l in m.modules() if isinstance(l, SpikingNeuron)]
        layers = tuple((_spike_fn_key(l.spike_grad), getattr(l, "grad_mode", None), getattr(l, "fused", None),
                        getattr(l, "reset_mechanism", None)) for l in neurons)
        # weights are read from their storage at every replay (in-place updates are seen; a replaced tensor is a new
        # key); the LIF constants are baked into the graph as numbers, so their values are part of the key (one copy)
        storage = tuple(t.data_ptr() for t in (*m.parameters(), *m.buffers()))
        consts = [t.detach().reshape(-1).double() for l in neurons for t in (getattr(getattr(l, "neuron", None), "beta", None),
                                                                             getattr(getattr(l, "neuron", None), "threshold", None))
                  if isinstance(t, torch.Tensor)]
        constants = tuple(torch.cat(consts).cpu().tolist()) if consts else ()
        return (bucket_size(x.shape[0]), tuple(x.shape[1:]), x.dtype, x.device, grad, layers,
                getattr(m, "channels_last", None), getattr(m, "num_steps", None), getattr(m, "readout", None),
                storage, constants)

    def _capture(self, key: Tuple[Hashable, ...], x: torch.Tensor, grad: bool) -> Optional[_Capture]:
        cap = self._captures.get(key)
        if cap is not None:
            self._captures.move_to_end(key)
            return cap
        if key in self._failed:
            return None
        while len(self._captures) >= max(1, self.max_graphs):
            self._captures.popitem(last=False)
        try:
            with torch.inference_mode(False):  # buffers that later calls outside inference mode may write
                cap = CAPTURES[self.backend](self.model, x, key[0], grad=grad)
        except RuntimeError as e:  # e.g. an operation a CUDA graph cannot hold: this shape runs the model itself
            self._failed.add(key)
            self.stats["failed"] += 1
            warnings.warn(f"could not capture a CUDA graph (batch {key[0]}, gradient {grad}): {e}; running the model "
                          "itself for this shape", RuntimeWarning, stacklevel=3)
            return None
        self._captures[key] = cap
        self.stats["captures"] += 1
        log.debug("captured a graph for batch %d, input %s, gradient %s", key[0], tuple(x.shape[1:]), grad)
        return cap

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        grad = self._graphable(x, kwargs)
        if grad is None:
            self.stats["eager"] += 1
            return self.model(x, **kwargs)
        check = getattr(self.model, "_check_input", None)
        if check is not None:  # the model's own input validation, eagerly (a graph cannot raise)
            x = check(x)
        cap = self._capture(self._key(x, grad), x, grad)
        if cap is None:
            self.stats["eager"] += 1
            return self.model(x)
        self.stats["replays"] += 1
        if grad:
            return _Replay.apply(x, cap)
        cap.load(x)
        cap.replay_forward()
        return cap.out[: x.shape[0]].clone()
