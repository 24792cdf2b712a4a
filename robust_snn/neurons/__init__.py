"""Spiking neuron layers: one interface (:class:`SpikingNeuron`), one file per neuron type.

``NEURONS`` maps the ``neuron`` key of a model config to its class; a new neuron type is
one new file (a :class:`SpikingNeuron` subclass with a ``name`` and a ``description``)
plus its import and one entry in ``NEURONS``, as ALIF and Synaptic are.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Dict, Iterator, Optional, Type

from torch import nn

from ..registry import Registry
from ..surrogates import parse_spec
from .alif import ALIF
from .base import RESET_MECHANISMS, SpikingNeuron
from .lif import LIF, _fast_lif_forward
from .synaptic import Synaptic

#: neuron types by config name (each class's ``name``)
NEURONS: Registry[Type[SpikingNeuron]] = Registry("neuron", {cls.name: cls for cls in (
    LIF,
    ALIF,
    Synaptic,
)})
#: one line per neuron type, for ``robust-snn info``
NEURON_DESCRIPTIONS: Dict[str, str] = {name: cls.description for name, cls in NEURONS.items()}


def make_neuron(name: str, **params: Any) -> SpikingNeuron:
    """A neuron layer by config name; ``params`` not taken by that type (e.g. ``alpha`` for LIF) are ignored."""
    cls = NEURONS.get(name)
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
