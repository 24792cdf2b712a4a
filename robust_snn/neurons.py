"""Multi-step leaky integrate-and-fire layer built on :class:`snntorch.Leaky`.

The snnTorch neuron holds the parameters (beta, threshold, reset mechanism,
surrogate); :class:`LIF` runs its recurrence over a whole ``[T, B, ...]``
sequence at once (SpikingJelly's multi-step mode) with exactly the update of
``snn.Leaky.forward`` (default ``reset_delay=True``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional, Tuple

import snntorch as snn
import torch
from torch import nn

from .surrogates import SPECIAL_GRADIENTS, make_spike_fn, parse_spec

RESET_MECHANISMS = ("subtract", "zero", "none")
_RESET_CODE = {"subtract": 0, "zero": 1, "none": 2}


def _lif_forward(cur_seq: torch.Tensor, beta: torch.Tensor, thr: torch.Tensor, reset: int, spike_fn) -> tuple:
    """The LIF recurrence of ``snn.Leaky`` (reset_delay=True); returns (spk_seq, mem_seq)."""
    mem = torch.zeros_like(cur_seq[0])
    spk_prev = torch.zeros_like(cur_seq[0])
    spikes: List[torch.Tensor] = []
    mems: List[torch.Tensor] = []
    for t in range(cur_seq.shape[0]):
        r = spk_prev.detach()  # == snn.Leaky.mem_reset(mem): detached Heaviside of the previous step
        if reset == 0:
            mem = beta * mem + cur_seq[t] - r * thr
        elif reset == 1:
            mem = beta * ((1 - r) * mem) + cur_seq[t]
        else:
            mem = beta * mem + cur_seq[t]
        spk_prev = spike_fn(mem - thr)
        spikes.append(spk_prev)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


def _empty_seq(num_steps: int, like: torch.Tensor) -> torch.Tensor:
    """Uninitialized ``[T, *like.shape]`` buffer whose time slices have ``like``'s layout (channels-last kept)."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        flat = torch.empty((num_steps * like.shape[0], *like.shape[1:]), dtype=like.dtype, device=like.device,
                           memory_format=torch.channels_last)
        return flat.view(num_steps, *like.shape)
    return torch.empty((num_steps, *like.shape), dtype=like.dtype, device=like.device)


def _like(g: Optional[torch.Tensor], seq: torch.Tensor) -> Optional[torch.Tensor]:
    """``g`` with the memory layout of ``seq`` (``[T, B, ...]``), copied only if it differs."""
    if g is None or g.stride() == seq.stride():
        return g
    return _empty_seq(seq.shape[0], seq[0]).copy_(g)


def _fast_lif_forward(cur: torch.Tensor, num_steps: int, static: bool, beta: float, thr: float,
                      reset: int, keep_mem: bool = True) -> tuple:
    """No-grad LIF recurrence with one fused update per step into preallocated buffers.

    Same arithmetic as :func:`_lif_forward` (``mem - thr > 0`` is ``mem > thr`` in IEEE
    floats); each step touches only ``[B, ...]`` slices, which stay in cache.
    """
    like = cur if static else cur[0]
    spk_seq = _empty_seq(num_steps, like)
    mem_seq = _empty_seq(num_steps if keep_mem else min(num_steps, 2), like)  # two alternating buffers suffice without it
    slots = len(mem_seq)  # step t lives in slot t % slots
    for t in range(num_steps):
        c = cur if static else cur[t]
        m = mem_seq[t % slots]
        if t == 0:
            m.copy_(c)
        else:
            prev, s_prev = mem_seq[(t - 1) % slots], spk_seq[t - 1]
            if reset == 1:  # beta * ((1 - s) * mem) + cur; (1 - s) * mem is exact for s in {0, 1}
                torch.addcmul(prev, s_prev, prev, value=-1.0, out=m)
                m.mul_(beta)
            else:
                torch.mul(prev, beta, out=m)
            m.add_(c)  # separate multiply and add: the same rounding as the reference
            if reset == 0:
                m.sub_(s_prev, alpha=thr)
        torch.gt(m, thr, out=spk_seq[t])
    return spk_seq, (mem_seq if keep_mem else None)


class _FusedLIF(torch.autograd.Function):
    """Whole-sequence LIF with a hand-written BPTT backward (exact, not truncated).

    Forward: one fused update per step into preallocated buffers (no autograd graph).
    For a static input (direct encoding) ``cur`` is ``[B, ...]``, broadcast over
    ``num_steps`` inside, and its gradient is the sum over time, accumulated in the loop.
    Saves the membrane trace (an output anyway) and, for reset-to-zero, the spikes.
    Backward: ``g_mem[t] = g_spk[t] * s'(u[t]) + g_mem_out[t] + g_mem[t+1] * dmem[t+1]/dmem[t]``
    with ``u = mem - thr`` and ``dmem[t+1]/dmem[t] = beta`` (subtract, none) or
    ``beta * (1 - spk[t])`` (zero); the reset term is detached, as in snnTorch. ``s'`` is the
    spike function's ``derivative_`` (in place, per step) when it has one, otherwise it
    is taken from the spike function's own backward, so any surrogate works.
    """

    @staticmethod
    def forward(ctx, cur, beta, thr, reset, spike_fn, num_steps, static, keep_mem):  # type: ignore[override]
        b, th = float(beta), float(thr)
        spk_seq, mem_seq = _fast_lif_forward(cur, num_steps, static, b, th, reset, keep_mem)
        if mem_seq is None:  # inference without recording: nothing to save, no membrane output
            mem_seq = spk_seq.new_empty(0)
        ctx.save_for_backward(mem_seq, spk_seq if reset == 1 else None)
        ctx.set_materialize_grads(False)  # an unused membrane output gets None, not a [T, B, ...] of zeros
        ctx.reset, ctx.spike_fn, ctx.beta, ctx.thr, ctx.static = reset, spike_fn, b, th, static
        return spk_seq, mem_seq

    @staticmethod
    def backward(ctx, g_spk, g_mem):  # type: ignore[override]
        mem_seq, spk_seq = ctx.saved_tensors
        if g_spk is None and g_mem is None:
            return None, None, None, None, None, None, None, None
        beta, thr, T = ctx.beta, ctx.thr, mem_seq.shape[0]
        # one copy into the membrane's layout (e.g. NCHW gradients from a Flatten into channels-last
        # spikes): mixed-stride element-wise ops are several times slower than the copy
        g_spk = _like(g_spk, mem_seq)
        g_mem = _like(g_mem, mem_seq)
        derivative = getattr(ctx.spike_fn, "derivative_", None)
        if derivative is None and g_spk is not None:  # generic surrogate: its own backward on the whole sequence
            with torch.enable_grad():
                u = (mem_seq - thr).requires_grad_(True)
                (dsdu,) = torch.autograd.grad(ctx.spike_fn(u), u, grad_outputs=torch.ones_like(u))
        d = torch.empty_like(mem_seq[0]) if derivative is not None else None
        g_sum = torch.zeros_like(mem_seq[0]) if ctx.static else None
        g_cur = None if ctx.static else _empty_seq(T, mem_seq[0])
        scratch = torch.empty_like(mem_seq[0]) if ctx.static else None
        carry = torch.empty_like(mem_seq[0])
        for t in range(T - 1, -1, -1):
            gm = scratch if ctx.static else g_cur[t]
            if g_spk is not None:
                if derivative is None:
                    d = dsdu[t]
                else:
                    torch.sub(mem_seq[t], thr, out=d)
                    derivative(d)
                torch.mul(g_spk[t], d, out=gm)
            else:
                gm.zero_()
            if g_mem is not None:
                gm.add_(g_mem[t])
            if t < T - 1:
                gm.add_(carry)
            if ctx.static:
                g_sum.add_(gm)
            if t > 0:  # carry = gm * dmem[t]/dmem[t-1]
                torch.mul(gm, beta, out=carry)
                if ctx.reset == 1:
                    carry.addcmul_(spk_seq[t - 1], gm, value=-beta)
        return (g_sum if ctx.static else g_cur), None, None, None, None, None, None, None


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons over time.

    Shape:
        - Input: ``cur_seq`` ``[T, B, ...]`` input currents.
        - Output: ``spk_seq`` ``[T, B, ...]`` binary spikes.

    Args:
        beta: membrane decay in [0, 1].
        threshold: firing threshold.
        surrogate: surrogate spec for the backward of the spike (see
            :mod:`robust_snn.surrogates`).
        reset_mechanism: ``"subtract"``, ``"zero"`` or ``"none"``.

    Reference: Eshraghian et al., "Training Spiking Neural Networks Using
    Lessons From Deep Learning", https://arxiv.org/abs/2109.12894
    """

    def __init__(
        self,
        *,
        beta: float = 0.9,
        threshold: float = 1.0,
        surrogate: str = "fast_sigmoid:slope=25",
        reset_mechanism: str = "subtract",
    ) -> None:
        super().__init__()
        if reset_mechanism not in RESET_MECHANISMS:
            raise ValueError(f"reset_mechanism must be one of {RESET_MECHANISMS}")
        self.neuron = snn.Leaky(
            beta=beta,
            threshold=threshold,
            spike_grad=make_spike_fn(surrogate),
            reset_mechanism=reset_mechanism,
        )
        # snnTorch appends every neuron to a class-level list (snnTorch issue #438);
        # we never use it, so drop ours to avoid keeping models alive forever.
        try:
            snn.SpikingNeuron.instances.remove(self.neuron)
        except (AttributeError, ValueError):
            pass
        self.reset_mechanism = reset_mechanism
        #: "surrogate" (exact BPTT with the neuron's spike_grad) or "rate" (BPTR/RGA).
        self.grad_mode = "surrogate"
        self.last_mem: Optional[torch.Tensor] = None
        self.record = False
        #: use the fused whole-sequence autograd function (False: plain autograd loop, the reference)
        self.fused = True

    def extra_repr(self) -> str:
        return f"reset={self.reset_mechanism}, grad_mode={self.grad_mode}"

    def set_surrogate(self, spec: Optional[str]) -> Tuple[Any, str]:
        """Route this layer's gradients through ``spec``; the forward pass is unchanged.

        Args:
            spec: a surrogate spec (``"atan:alpha=2"``), ``"rate"`` (the rate-based
                gradient, BPTR/RGA), or ``None`` to keep the current one.

        Returns:
            The previous setting, for :meth:`restore_surrogate`.
        """
        previous = (self.neuron.spike_grad, self.grad_mode)
        if spec is not None:
            name, _ = parse_spec(spec)
            if name in SPECIAL_GRADIENTS:
                self.grad_mode = name
            else:
                self.neuron.spike_grad = make_spike_fn(spec)
                self.grad_mode = "surrogate"
        return previous

    def restore_surrogate(self, previous: Tuple[Any, str]) -> None:
        """Undo :meth:`set_surrogate` with the setting it returned."""
        self.neuron.spike_grad, self.grad_mode = previous

    def _loop(self, cur_seq: torch.Tensor, spike_fn, num_steps: Optional[int] = None) -> tuple:
        """Run the recurrence; ``num_steps`` set means ``cur_seq`` is one static ``[B, ...]`` input."""
        beta = self.neuron.beta.clamp(0, 1).to(cur_seq.dtype)
        thr = self.neuron.threshold.to(cur_seq.dtype)
        reset = _RESET_CODE[self.reset_mechanism]
        static = num_steps is not None
        if self.fused and not (beta.requires_grad or thr.requires_grad):
            T = int(num_steps) if static else cur_seq.shape[0]
            keep_mem = self.record or (torch.is_grad_enabled() and cur_seq.requires_grad)
            spk_seq, mem_seq = _FusedLIF.apply(cur_seq, beta, thr, reset, spike_fn, T, static, keep_mem)
        else:  # plain autograd through the loop: the reference path
            if static:
                cur_seq = cur_seq.unsqueeze(0).expand(int(num_steps), *cur_seq.shape)
            spk_seq, mem_seq = _lif_forward(cur_seq, beta, thr, reset, spike_fn)
        return spk_seq, (mem_seq if self.record else None)

    def forward(self, cur_seq: torch.Tensor) -> torch.Tensor:
        """Spike trains ``[T, B, ...]``; with ``record`` set, membranes go to ``last_mem``."""
        if self.grad_mode == "rate" and torch.is_grad_enabled() and cur_seq.requires_grad:
            spk_seq = self._rate_forward(cur_seq)
        else:
            spk_seq, self.last_mem = self._loop(cur_seq, self.neuron.spike_grad)
        return spk_seq

    def forward_static(self, cur: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Spike trains ``[T, B, ...]`` for the same input current ``cur`` ``[B, ...]`` at every step.

        Equal to ``forward(cur.expand(T, ...))``, without materializing the ``[T, B, ...]``
        input or its gradient (the gradient to ``cur`` is summed over time in the loop).
        """
        if self.grad_mode == "rate" and torch.is_grad_enabled() and cur.requires_grad:
            return self._rate_forward(cur.unsqueeze(0).expand(int(num_steps), *cur.shape))
        spk_seq, self.last_mem = self._loop(cur, self.neuron.spike_grad, num_steps)
        return spk_seq

    def _rate_forward(self, cur_seq: torch.Tensor) -> torch.Tensor:
        """Exact spikes forward; gradient of the firing rate w.r.t. the mean input.

        The rate of an (integrate-and-fire-like) neuron is approximated by
        ``relu(mean(I) / threshold)``; its gradient is spread evenly
        over time steps (BPTR, Ding et al. 2022, https://arxiv.org/abs/2205.09876;
        RGA, Bu et al. 2023, https://arxiv.org/abs/2305.00784).
        """
        with torch.no_grad():
            spk_seq, self.last_mem = self._loop(cur_seq, self.neuron.spike_grad)
        thr = self.neuron.threshold.to(cur_seq.dtype)
        proxy = torch.relu(cur_seq.mean(0) / thr)
        if self.last_mem is not None:  # membrane readout / recording: identity gradient to the input current
            self.last_mem = self.last_mem + (cur_seq - cur_seq.detach())
        return spk_seq + (proxy - proxy.detach()).unsqueeze(0)


@contextlib.contextmanager
def use_surrogate(model: nn.Module, spec: Optional[str]) -> Iterator[None]:
    """Temporarily change how gradients pass through every LIF layer of ``model``.

    The forward pass is unchanged; only the backward of the spike function changes
    (``spec="rate"`` switches to the rate-based gradient). The previous setting is
    restored on exit, also when the body raises.

    Args:
        model: any module containing :class:`LIF` layers.
        spec: surrogate spec, ``"rate"``, or ``None`` to keep the model's own.
    """
    if spec is None:
        yield
        return
    parse_spec(spec)  # validate before touching any layer
    layers = [m for m in model.modules() if isinstance(m, LIF)]
    saved = [m.set_surrogate(spec) for m in layers]
    try:
        yield
    finally:
        for m, previous in zip(layers, saved):
            m.restore_surrogate(previous)
