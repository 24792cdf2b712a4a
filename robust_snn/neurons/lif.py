"""Leaky integrate-and-fire (LIF) neurons built on :class:`snntorch.Leaky`, with a fused kernel.

The snnTorch neuron holds the parameters (beta, threshold, reset mechanism,
surrogate); :class:`LIF` runs its recurrence over a whole ``[T, B, ...]``
sequence at once (SpikingJelly's multi-step mode) with exactly the update of
``snn.Leaky.forward`` (default ``reset_delay=True``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import snntorch as snn
import torch

from ..surrogates import make_spike_fn
from . import triton_lif
from .buffers import _empty_seq, _like
from .base import SpikingNeuron, State, reset_signal

_RESET_CODE = {"subtract": 0, "zero": 1, "none": 2}


def _fast_lif_forward(cur: torch.Tensor, num_steps: int, static: bool, beta: float, thr: float,
                      reset: int, keep_mem: bool = True) -> tuple:
    """No-grad LIF recurrence with one fused update per step into preallocated buffers.

    Same arithmetic as :meth:`LIF.step` (``mem - thr > 0`` is ``mem > thr`` in IEEE
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


class LIF(SpikingNeuron):
    """Leaky integrate-and-fire neurons over time (snnTorch's ``Leaky``).

    ``mem[t] = beta * mem[t-1] + cur[t] - s[t-1] * threshold`` (reset by subtraction;
    ``zero`` and ``none`` as in snnTorch), ``s[t] = H(mem[t] - threshold)``. The
    multi-step forward runs a fused whole-sequence kernel with a hand-written exact BPTT
    backward; ``fused = False`` runs the reference loop.

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

    name = "lif"
    description = "leaky integrate-and-fire (snnTorch Leaky), fused kernel"

    def __init__(
        self,
        *,
        beta: float = 0.9,
        threshold: float = 1.0,
        surrogate: str = "fast_sigmoid:slope=25",
        reset_mechanism: str = "subtract",
    ) -> None:
        super().__init__(reset_mechanism=reset_mechanism)
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

    def init_state(self, like: torch.Tensor) -> State:
        return (torch.zeros_like(like),)

    def threshold_value(self) -> torch.Tensor:
        return self.neuron.threshold

    def step(self, cur: torch.Tensor, state: State, spike_fn=None) -> Tuple[torch.Tensor, State]:
        """``snn.Leaky.forward`` for one step (``reset_delay=True``)."""
        (mem,) = state
        beta = self.neuron.beta.clamp(0, 1).to(cur.dtype)
        thr = self.neuron.threshold.to(cur.dtype)
        r = reset_signal(mem, thr)
        if self.reset_mechanism == "subtract":
            mem = beta * mem + cur - r * thr
        elif self.reset_mechanism == "zero":
            mem = beta * ((1 - r) * mem) + cur
        else:
            mem = beta * mem + cur
        return (spike_fn or self.spike_grad)(mem - thr), (mem,)

    def _host_constants(self, dtype: torch.dtype) -> Tuple[float, float]:
        """beta (clamped to [0, 1]) and the threshold in ``dtype``, as Python numbers for the fused kernels.

        Read afresh on every call, except while a CUDA graph is captured (:mod:`robust_snn.graphs`),
        which allows no device-to-host copy: then the values read by the warm-up call just before
        are used (the graph bakes them in, and the graph's cache key holds them).
        """
        b, th = self.neuron.beta, self.neuron.threshold
        if b.is_cuda and torch.cuda.is_current_stream_capturing():
            cached = getattr(self, "_constants", None)
            if cached is None or cached[0] != dtype:
                raise RuntimeError("LIF constants were not read before the CUDA-graph capture (run a warm-up call first)")
            return cached[1]
        values = (float(b.detach().clamp(0, 1).to(dtype)), float(th.detach().to(dtype)))
        self._constants = (dtype, values)
        return values

    def simulate(self, cur_seq: torch.Tensor, spike_fn, num_steps: Optional[int] = None) -> tuple:
        """Run the recurrence; ``num_steps`` set means ``cur_seq`` is one static ``[B, ...]`` input."""
        reset = _RESET_CODE[self.reset_mechanism]
        static = num_steps is not None
        if self.fused and not (self.neuron.beta.requires_grad or self.neuron.threshold.requires_grad):
            beta, thr = self._host_constants(cur_seq.dtype)
            T = int(num_steps) if static else cur_seq.shape[0]
            keep_mem = self.record or (torch.is_grad_enabled() and cur_seq.requires_grad)
            on_gpu = triton_lif.enabled_for(cur_seq, elements=cur_seq.numel() * (T if static else 1))
            kernel = triton_lif.TritonLIF if on_gpu else _FusedLIF  # one launch per layer on CUDA
            spk_seq, mem_seq = kernel.apply(cur_seq, beta, thr, reset, spike_fn, T, static, keep_mem)
        else:  # plain autograd through :meth:`step`: the reference path
            return super().simulate(cur_seq, spike_fn, num_steps)
        return spk_seq, (mem_seq if self.record else None)
