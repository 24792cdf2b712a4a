"""Current-based (synaptic) LIF neurons: snnTorch's ``Synaptic``, two state variables."""
from __future__ import annotations

from typing import Tuple

import snntorch as snn
import torch

from ..surrogates import make_spike_fn
from .base import SpikingNeuron, State, reset_signal


class Synaptic(SpikingNeuron):
    """Second-order LIF: the input charges a decaying synaptic current that charges the membrane.

    ``syn[t] = alpha * syn[t-1] + cur[t]``, ``mem[t] = beta * mem[t-1] + syn[t] - s[t-1] * threshold``
    (reset by subtraction; ``zero`` zeroes the membrane only, as in snnTorch),
    ``s[t] = H(mem[t] - threshold)``. Runs the reference loop (no fused kernel).

    Shape:
        - Input: ``cur_seq`` ``[T, B, ...]``.
        - Output: ``spk_seq`` ``[T, B, ...]``.

    Args:
        alpha: synaptic current decay in [0, 1].
        beta: membrane decay in [0, 1].
        threshold: firing threshold.
        surrogate: surrogate spec for the backward of the spike.
        reset_mechanism: ``"subtract"``, ``"zero"`` or ``"none"``.

    Reference: snnTorch tutorial 5, https://snntorch.readthedocs.io/en/latest/snn.neurons_synaptic.html
    """

    name = "synaptic"
    description = "current-based LIF, two state variables (snnTorch Synaptic; alpha: synaptic decay)"
    mem_index = 1

    def __init__(self, *, alpha: float = 0.9, beta: float = 0.9, threshold: float = 1.0,
                 surrogate: str = "fast_sigmoid:slope=25", reset_mechanism: str = "subtract") -> None:
        super().__init__(reset_mechanism=reset_mechanism)
        self.neuron = snn.Synaptic(alpha=alpha, beta=beta, threshold=threshold, spike_grad=make_spike_fn(surrogate),
                                   reset_mechanism=reset_mechanism)
        try:  # snnTorch keeps every neuron in a class-level list (snnTorch issue #438); we never use it
            snn.SpikingNeuron.instances.remove(self.neuron)
        except (AttributeError, ValueError):
            pass

    def init_state(self, like: torch.Tensor) -> State:
        return (torch.zeros_like(like), torch.zeros_like(like))

    def threshold_value(self) -> torch.Tensor:
        return self.neuron.threshold

    def step(self, cur: torch.Tensor, state: State, spike_fn=None) -> Tuple[torch.Tensor, State]:
        """``snn.Synaptic.forward`` for one step (``reset_delay=True``)."""
        syn, mem = state
        alpha = self.neuron.alpha.clamp(0, 1).to(cur.dtype)
        beta = self.neuron.beta.clamp(0, 1).to(cur.dtype)
        thr = self.neuron.threshold.to(cur.dtype)
        r = reset_signal(mem, thr)
        syn = alpha * syn + cur
        mem = beta * mem + syn
        if self.reset_mechanism == "subtract":
            mem = mem - r * thr
        elif self.reset_mechanism == "zero":
            mem = mem - mem * r
        return (spike_fn or self.spike_grad)(mem - thr), (syn, mem)
