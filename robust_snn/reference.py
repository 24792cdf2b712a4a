"""The plain snnTorch simulation users write today, on a robust-snn model's weights.

Step by step as in the snnTorch tutorials: at every time step every layer is
recomputed (the first convolution included) and each ``snn.Leaky`` is called
once (``Synaptic`` for synaptic layers; ALIF, which snnTorch lacks, runs its own step). Used as the correctness reference for the layer-by-layer simulation and
as the speed baseline in ``benchmarks/``.
"""
from __future__ import annotations

from typing import List, Optional

import snntorch as snn
import torch
from torch import nn

from .models import SpikingClassifier
from .neurons import ALIF, SpikingNeuron


def step_by_step_forward(model: SpikingClassifier, x: torch.Tensor, *, num_steps: Optional[int] = None,
                         x_seq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits of ``model`` computed with a per-time-step snnTorch loop.

    Args:
        model: the model whose weights and neurons are used.
        x: images ``[B, C, H, W]`` in [0, 1].
        num_steps: T (default: the model's).
        x_seq: pre-drawn encoder output ``[T, B, C, H, W]`` (to compare
            stochastic encoders on the same draws); default: encode ``x``.

    Shape: ``[B, C, H, W]`` -> ``[B, K]``.
    """
    if model.events:  # event tensors [B, T, P, H, W] are the input sequence itself
        x_seq = x.float().transpose(0, 1)
        T = x_seq.shape[0]
    T = int(num_steps or model.num_steps) if not model.events else T
    if x_seq is None:
        xin = model.preprocess(x)
        x_seq = model.encoder(xin, T) if not model.encoder.static else xin.unsqueeze(0).expand(T, *xin.shape)
    states: List[Optional[tuple]] = [None] * len(model.stages)
    out_spk, out_mem = [], []
    for t in range(T):
        h = x_seq[t]
        inputs: List[torch.Tensor] = []  # spikes entering each stage (residual stages add a shortcut of one of them)
        for i, stage in enumerate(model.stages):
            inputs.append(h)
            cur = stage.layers(h)
            if stage.shortcut is not None:
                cur = cur + stage.shortcut(inputs[stage.skip])
            h, states[i] = _snntorch_step(stage.lif, cur, states[i])
        out_spk.append(h)
        out_mem.append(states[-1][-1])
    if model.readout == "count":
        return torch.stack(out_spk).sum(0)
    return torch.stack(out_mem).mean(0)


def _snntorch_step(layer: SpikingNeuron, cur: torch.Tensor, state: Optional[tuple]) -> tuple:
    """One step of ``layer``'s own snnTorch neuron (``Leaky``, ``Synaptic``); ALIF, which snnTorch lacks, steps itself.

    Returns ``(spk, state)`` with the membrane potential last in ``state``.
    """
    neuron = layer.neuron
    if isinstance(layer, ALIF):
        full = state[0] if state is not None else layer.init_state(cur)
        spk, full = layer.step(cur, full)
        return spk, (full, full[0])
    if isinstance(neuron, snn.Synaptic):
        syn, mem = state if state is not None else (torch.zeros_like(cur), torch.zeros_like(cur))
        spk, syn, mem = neuron(cur, syn, mem)
        return spk, (syn, mem)
    mem = state[0] if state is not None else torch.zeros_like(cur)
    spk, mem = neuron(cur, mem)
    return spk, (mem,)


class StepByStepModel(nn.Module):
    """``nn.Module`` wrapper of :func:`step_by_step_forward`, attackable by torchattacks."""

    def __init__(self, model: SpikingClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return step_by_step_forward(self.model, x)
