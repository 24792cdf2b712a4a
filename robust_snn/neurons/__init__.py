"""Spiking neuron layers: one interface (:class:`SpikingNeuron`), one file per neuron type.

``NEURONS`` maps the ``neuron`` key of a model config to its class; a new neuron type is
one new file and one line here.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Type

from torch import nn

from ..errors import RobustSNNError
from ..surrogates import parse_spec
from .alif import ALIF
from .base import RESET_MECHANISMS, SpikingNeuron
from .lif import LIF, _fast_lif_forward
from .synaptic import Synaptic

#: neuron types by config name, with a one-line description
NEURONS: Dict[str, Type[SpikingNeuron]] = {
    "lif": LIF,
    "alif": ALIF,
    "synaptic": Synaptic,
}
NEURON_DESCRIPTIONS = {
    "lif": "leaky integrate-and-fire (snnTorch Leaky), fused kernel",
    "alif": "LIF with a spike-triggered decaying threshold (alpha: its decay, adapt: its step)",
    "synaptic": "current-based LIF, two state variables (snnTorch Synaptic; alpha: synaptic decay)",
}


def make_neuron(name: str, **params: Any) -> SpikingNeuron:
    """A neuron layer by config name; ``params`` not taken by that type (e.g. ``alpha`` for LIF) are ignored."""
    import inspect

    if name not in NEURONS:
        raise RobustSNNError(f"unknown neuron {name!r}; choose one of: {', '.join(NEURONS)}")
    cls = NEURONS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in params.items() if k in accepted})


@contextlib.contextmanager
def use_surrogate(model: nn.Module, spec: Optional[str]) -> Iterator[None]:
    """Temporarily change how gradients pass through every spiking layer of ``model``.

    The forward pass is unchanged; only the backward of the spike function changes
    (``spec="rate"`` switches to the rate-based gradient). The previous setting is
    restored on exit, also when the body raises.

    Args:
        model: any module containing :class:`SpikingNeuron` layers.
        spec: surrogate spec, ``"rate"``, or ``None`` to keep the model's own.
    """
    if spec is None:
        yield
        return
    parse_spec(spec)  # validate before touching any layer
    layers = [m for m in model.modules() if isinstance(m, SpikingNeuron)]
    saved = [m.set_surrogate(spec) for m in layers]
    try:
        yield
    finally:
        for m, previous in zip(layers, saved):
            m.restore_surrogate(previous)


__all__ = ["ALIF", "LIF", "NEURONS", "NEURON_DESCRIPTIONS", "RESET_MECHANISMS", "SpikingNeuron", "Synaptic", "make_neuron", "use_surrogate",
           "_fast_lif_forward"]
