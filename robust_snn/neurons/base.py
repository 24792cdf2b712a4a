"""The spiking-layer interface every neuron type implements.

In the spirit of SpikingJelly's ``MemoryModule``: a layer owns its state, its reset and
its surrogate; it runs single-step (:meth:`SpikingNeuron.step`, the reference semantics)
and multi-step over a whole ``[T, B, ...]`` sequence (:meth:`SpikingNeuron.forward`,
which a neuron may speed up with a fused kernel). Attacks change the gradient through
:meth:`SpikingNeuron.set_surrogate`, never through a neuron's internals.

A new neuron type is one file with a subclass (with its ``name`` and ``description``), plus
its import and one entry in :data:`robust_snn.neurons.NEURONS`.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import nn

from ..surrogates import SPECIAL_GRADIENTS, make_spike_fn, parse_spec

RESET_MECHANISMS = ("subtract", "zero", "none")

State = Tuple[torch.Tensor, ...]


class SpikingNeuron(nn.Module):
    """Base class of multi-step spiking layers.

    Subclasses hold their parameters and spike function in an snnTorch neuron
    (``self.neuron``, never called on its own state), implement :meth:`init_state` and
    :meth:`step` (one time step, exactly the snnTorch update of that neuron,
    ``reset_delay=True``), and say which state variable is the membrane potential
    (:attr:`mem_index`). The multi-step
    :meth:`forward` loops :meth:`step` over time unless the subclass overrides
    :meth:`simulate` with something faster and identical.

    Shape:
        - Input: ``cur_seq`` ``[T, B, ...]`` input currents.
        - Output: ``spk_seq`` ``[T, B, ...]`` binary spikes; with :attr:`record` set,
          :attr:`last_mem` holds the membrane potentials ``[T, B, ...]``.

    Attributes:
        grad_mode: ``"surrogate"`` (exact BPTT through the spike function's surrogate) or
            ``"rate"`` (the rate-based gradient, BPTR/RGA).
        record: keep the membrane trace of the last call in :attr:`last_mem`.
        fused: use the neuron's fast path, if it has one (``False``: the reference loop).
    """

    #: registry name (``neuron`` in a model config)
    name = "base"
    #: one line for ``robust-snn info``
    description = ""
    #: position of the membrane potential in the state tuple
    mem_index = 0

    def __init__(self, *, reset_mechanism: str = "subtract") -> None:
        super().__init__()
        if reset_mechanism not in RESET_MECHANISMS:
            raise ValueError(f"reset_mechanism must be one of {RESET_MECHANISMS}")
        self.reset_mechanism = reset_mechanism
        self.grad_mode = "surrogate"
        self.last_mem: Optional[torch.Tensor] = None
        self.record = False
        self.fused = True

    # -- what a neuron type defines ---------------------------------------------------------------
    def init_state(self, like: torch.Tensor) -> State:
        """Zero state for one time step of inputs shaped like ``like`` ``[B, ...]``."""
        raise NotImplementedError

    def step(self, cur: torch.Tensor, state: State, spike_fn: Optional[Callable] = None) -> Tuple[torch.Tensor, State]:
        """One time step: ``(spk, new_state)`` from input current ``cur`` ``[B, ...]``."""
        raise NotImplementedError

    def threshold_value(self) -> torch.Tensor:
        """The (base) firing threshold, used by the rate gradient."""
        raise NotImplementedError

    # -- surrogate -------------------------------------------------------------------------------
    @property
    def spike_grad(self) -> Callable:
        """The spike function: Heaviside forward, surrogate backward (held by the snnTorch neuron)."""
        return self.neuron.spike_grad

    @spike_grad.setter
    def spike_grad(self, fn: Callable) -> None:
        self.neuron.spike_grad = fn

    def set_surrogate(self, spec: Optional[str]) -> Tuple[Any, str]:
        """Route this layer's gradients through ``spec``; the forward pass is unchanged.

        Args:
            spec: a surrogate spec (``"atan:alpha=2"``), ``"rate"`` (the rate-based
                gradient, BPTR/RGA), or ``None`` to keep the current one.

        Returns:
            The previous setting, for :meth:`restore_surrogate`.
        """
        previous = (self.spike_grad, self.grad_mode)
        if spec is not None:
            name, _ = parse_spec(spec)
            if name in SPECIAL_GRADIENTS:
                self.grad_mode = name
            else:
                self.spike_grad = make_spike_fn(spec)
                self.grad_mode = "surrogate"
        return previous

    def restore_surrogate(self, previous: Tuple[Any, str]) -> None:
        """Undo :meth:`set_surrogate` with the setting it returned."""
        self.spike_grad, self.grad_mode = previous

    # -- state -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything from the last call (the next call starts from zero state)."""
        self.last_mem = None
        neuron = getattr(self, "neuron", None)
        for name in ("mem", "syn"):  # snnTorch's own hidden state: kept empty (we never use it)
            v = getattr(neuron, name, None)
            if isinstance(v, torch.Tensor) and (v.numel() or v.is_inference()):
                # a normal tensor even under inference_mode: DDP syncs buffers and cannot read inference tensors
                with torch.inference_mode(False):
                    setattr(neuron, name, torch.zeros(0, device=v.device))

    # -- multi-step ------------------------------------------------------------------------------
    def reference_forward(self, cur_seq: torch.Tensor, spike_fn: Optional[Callable] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` looped over time with plain autograd: ``(spk_seq, mem_seq)``."""
        state = self.init_state(cur_seq[0])
        spikes: List[torch.Tensor] = []
        mems: List[torch.Tensor] = []
        for t in range(cur_seq.shape[0]):
            spk, state = self.step(cur_seq[t], state, spike_fn)
            spikes.append(spk)
            mems.append(state[self.mem_index])
        return torch.stack(spikes), torch.stack(mems)

    def simulate(self, cur: torch.Tensor, spike_fn: Callable, num_steps: Optional[int] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Run the recurrence; ``num_steps`` set means ``cur`` is one static ``[B, ...]`` input.

        Returns ``(spk_seq, mem_seq)`` with ``mem_seq`` only when :attr:`record` is set.
        """
        if num_steps is not None:
            cur = cur.unsqueeze(0).expand(int(num_steps), *cur.shape)
        spk_seq, mem_seq = self.reference_forward(cur, spike_fn)
        return spk_seq, (mem_seq if self.record else None)

    def forward(self, cur_seq: torch.Tensor) -> torch.Tensor:
        """Spike trains ``[T, B, ...]``; with :attr:`record` set, membranes go to :attr:`last_mem`."""
        if self.grad_mode == "rate" and torch.is_grad_enabled() and cur_seq.requires_grad:
            return self._rate_forward(cur_seq)
        spk_seq, self.last_mem = self.simulate(cur_seq, self.spike_grad)
        return spk_seq

    def forward_static(self, cur: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Spike trains ``[T, B, ...]`` for the same input current ``cur`` ``[B, ...]`` at every step.

        Equal to ``forward(cur.expand(T, ...))``; a fused path may avoid materializing
        the ``[T, B, ...]`` input or its gradient.
        """
        if self.grad_mode == "rate" and torch.is_grad_enabled() and cur.requires_grad:
            return self._rate_forward(cur.unsqueeze(0).expand(int(num_steps), *cur.shape))
        spk_seq, self.last_mem = self.simulate(cur, self.spike_grad, num_steps)
        return spk_seq

    def _rate_forward(self, cur_seq: torch.Tensor) -> torch.Tensor:
        """Exact spikes forward; gradient of the firing rate w.r.t. the mean input.

        The rate of an (integrate-and-fire-like) neuron is approximated by
        ``relu(mean(I) / threshold)``; its gradient is spread evenly over time steps
        (BPTR, Ding et al. 2022, https://arxiv.org/abs/2205.09876; RGA, Bu et al. 2023,
        https://arxiv.org/abs/2305.00784).
        """
        with torch.no_grad():
            spk_seq, self.last_mem = self.simulate(cur_seq, self.spike_grad)
        thr = self.threshold_value().to(cur_seq.dtype)
        proxy = torch.relu(cur_seq.mean(0) / thr)
        if self.last_mem is not None:  # membrane readout / recording: identity gradient to the input current
            self.last_mem = self.last_mem + (cur_seq - cur_seq.detach())
        return spk_seq + (proxy - proxy.detach()).unsqueeze(0)

    def extra_repr(self) -> str:
        return f"reset={self.reset_mechanism}, grad_mode={self.grad_mode}"


def reset_signal(mem: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """snnTorch's ``mem_reset``: the detached Heaviside of the previous membrane, ``(mem - thr > 0)``."""
    return (mem - threshold > 0).to(mem.dtype)
