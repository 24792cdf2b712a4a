"""Multi-step leaky integrate-and-fire layer built on :class:`snntorch.Leaky`.

The snnTorch neuron holds the parameters (beta, threshold, reset mechanism,
surrogate); :class:`LIF` runs its recurrence over a whole ``[T, B, ...]``
sequence at once (SpikingJelly's multi-step mode) with exactly the update of
``snn.Leaky.forward`` (default ``reset_delay=True``).
"""
from __future__ import annotations

from typing import List, Optional

import snntorch as snn
import torch
from torch import nn

from .surrogates import make_spike_fn

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


class _FusedLIF(torch.autograd.Function):
    """Whole-sequence LIF with a hand-written BPTT backward (exact, not truncated).

    Saves only the spike function's input ``u = mem - thr`` (and the spikes for
    reset-to-zero) instead of autograd's per-step intermediates.
    Backward: ``g_mem[t] = g_spk[t] * s'(u[t]) + g_mem_out[t] + g_mem[t+1] * dmem[t+1]/dmem[t]``
    with ``dmem[t+1]/dmem[t] = beta`` (subtract, none) or ``beta * (1 - spk[t])`` (zero);
    the reset term is detached, as in snnTorch. ``s'`` is taken from the spike
    function's own backward, so any surrogate works.
    """

    @staticmethod
    def forward(ctx, cur_seq, beta, thr, reset, spike_fn):  # type: ignore[override]
        with torch.no_grad():
            spk_seq, mem_seq = _lif_forward(cur_seq, beta, thr, reset, spike_fn)
        ctx.save_for_backward(mem_seq - thr, spk_seq if reset == 1 else None, beta)
        ctx.reset, ctx.spike_fn = reset, spike_fn
        return spk_seq, mem_seq

    @staticmethod
    def backward(ctx, g_spk, g_mem):  # type: ignore[override]
        u_seq, spk_seq, beta = ctx.saved_tensors
        with torch.enable_grad():
            u = u_seq.detach().requires_grad_(True)
            (dsdu,) = torch.autograd.grad(ctx.spike_fn(u), u, grad_outputs=torch.ones_like(u))
        g_cur = torch.empty_like(u_seq)
        carry = torch.zeros_like(u_seq[0])
        for t in range(u_seq.shape[0] - 1, -1, -1):
            gm = carry
            if g_spk is not None:
                gm = gm + g_spk[t] * dsdu[t]
            if g_mem is not None:
                gm = gm + g_mem[t]
            g_cur[t] = gm
            if t > 0:
                carry = gm * beta if ctx.reset != 1 else gm * beta * (1 - spk_seq[t - 1])
        return g_cur, None, None, None, None


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

    def _loop(self, cur_seq: torch.Tensor, spike_fn) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        beta = self.neuron.beta.clamp(0, 1).to(cur_seq.dtype)
        thr = self.neuron.threshold.to(cur_seq.dtype)
        reset = _RESET_CODE[self.reset_mechanism]
        if self.fused and not (beta.requires_grad or thr.requires_grad):
            spk_seq, mem_seq = _FusedLIF.apply(cur_seq, beta, thr, reset, spike_fn)
        else:  # plain autograd through the loop: the reference path
            spk_seq, mem_seq = _lif_forward(cur_seq, beta, thr, reset, spike_fn)
        return spk_seq, (mem_seq if self.record else None)

    def forward(self, cur_seq: torch.Tensor) -> torch.Tensor:
        """Spike trains ``[T, B, ...]``; with ``record`` set, membranes go to ``last_mem``."""
        if self.grad_mode == "rate" and torch.is_grad_enabled() and cur_seq.requires_grad:
            spk_seq = self._rate_forward(cur_seq)
        else:
            spk_seq, self.last_mem = self._loop(cur_seq, self.neuron.spike_grad)
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
