"""Adaptive-threshold LIF (ALIF) neurons: every spike raises the threshold, which decays back."""
from __future__ import annotations

from typing import Tuple

import snntorch as snn
import torch

from ..surrogates import make_spike_fn
from .base import SpikingNeuron, State


class ALIF(SpikingNeuron):
    """LIF neurons with a spike-triggered, decaying threshold (spike-frequency adaptation).

    ``a[t] = alpha * a[t-1] + s[t-1]``, ``theta[t] = threshold + adapt * a[t]``,
    ``mem[t] = beta * mem[t-1] + cur[t] - s[t-1] * theta[t-1]`` (reset by subtraction of the
    threshold the neuron crossed; ``zero`` and ``none`` as in snnTorch's ``Leaky``),
    ``s[t] = H(mem[t] - theta[t])``. The reset uses the detached previous spike, as snnTorch
    does; the adaptation variable ``a`` keeps its gradient (BPTT through the threshold, as
    in LSNNs). With ``adapt = 0`` it is exactly snnTorch's ``Leaky``. snnTorch has no ALIF,
    so the parameters live in an ``snn.Leaky`` (beta, threshold, spike function) plus two
    buffers. Runs the reference loop (no fused kernel).

    Shape:
        - Input: ``cur_seq`` ``[T, B, ...]``.
        - Output: ``spk_seq`` ``[T, B, ...]``.

    Args:
        alpha: decay of the threshold adaptation in [0, 1].
        adapt: threshold increase per spike (>= 0).
        beta: membrane decay in [0, 1].
        threshold: baseline firing threshold.
        surrogate: surrogate spec for the backward of the spike.
        reset_mechanism: ``"subtract"``, ``"zero"`` or ``"none"``.

    Reference: Bellec et al., "Long short-term memory and learning-to-learn in networks of
    spiking neurons", NeurIPS 2018, https://arxiv.org/abs/1803.09574
    """

    name = "alif"
    description = "LIF with a spike-triggered decaying threshold (alpha: its decay, adapt: its step)"

    def __init__(self, *, alpha: float = 0.9, adapt: float = 0.2, beta: float = 0.9, threshold: float = 1.0,
                 surrogate: str = "fast_sigmoid:slope=25", reset_mechanism: str = "subtract") -> None:
        super().__init__(reset_mechanism=reset_mechanism)
        self.neuron = snn.Leaky(beta=beta, threshold=threshold, spike_grad=make_spike_fn(surrogate), reset_mechanism=reset_mechanism)
        try:  # snnTorch keeps every neuron in a class-level list (snnTorch issue #438); we never use it
            snn.SpikingNeuron.instances.remove(self.neuron)
        except (AttributeError, ValueError):
            pass
        self.register_buffer("alpha", torch.as_tensor(float(alpha)))
        self.register_buffer("adapt", torch.as_tensor(float(adapt)))

    def init_state(self, like: torch.Tensor) -> State:
        z = torch.zeros_like(like)
        return (z, z, z, z + self.neuron.threshold.to(like.dtype))  # mem, adaptation, previous spike, previous threshold

    def threshold_value(self) -> torch.Tensor:
        return self.neuron.threshold

    def step(self, cur: torch.Tensor, state: State, spike_fn=None) -> Tuple[torch.Tensor, State]:
        mem, a, spk_prev, theta_prev = state
        alpha = self.alpha.clamp(0, 1).to(cur.dtype)
        beta = self.neuron.beta.clamp(0, 1).to(cur.dtype)
        r = spk_prev.detach()
        a = alpha * a + spk_prev
        theta = self.neuron.threshold.to(cur.dtype) + self.adapt.to(cur.dtype) * a
        if self.reset_mechanism == "subtract":
            mem = beta * mem + cur - r * theta_prev
        elif self.reset_mechanism == "zero":
            mem = beta * ((1 - r) * mem) + cur
        else:
            mem = beta * mem + cur
        spk = (spike_fn or self.spike_grad)(mem - theta)
        return spk, (mem, a, spk, theta)

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha):g}, adapt={float(self.adapt):g}, " + super().extra_repr()
