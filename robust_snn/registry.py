"""One registry type for everything robust-snn looks up by name.

Attacks, surrogates, defenses, detectors, neurons and threat models are each a
:class:`Registry`: a mapping from name to entry (``REG[name]``, ``name in REG``, ``.items()``
and iteration work as on a dict) with one lookup, :meth:`Registry.get`, that gives the
same one-line error for an unknown name everywhere. Parameters written as
``name:key=value`` are parsed and checked in :mod:`robust_snn.specs`, not here.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, MutableMapping, Optional, Tuple, TypeVar, Union

from .errors import RobustSNNError

V = TypeVar("V")

_MISSING: Any = object()


class Registry(MutableMapping[str, V]):
    """Named entries of one kind, in registration order.

    Entries are added with :meth:`register`, which refuses to overwrite one. Item
    assignment and deletion replace and remove entries, so a test can patch one in for
    its duration (``monkeypatch.setitem(ATTACKS, "noise", spec)``).

    Args:
        kind: what the entries are, for the error message (``"attack"``, ``"threat model"``).
        entries: initial ``name -> entry`` pairs (a mapping or an iterable of pairs).
        normalize: maps a user-typed name to its key before :meth:`get` looks it up
            (e.g. ``str.lower``); the error message shows the name as typed.
        also: names the caller accepts besides the entries (e.g. ``none`` for defenses),
            listed first among the choices of the error message.

    Example:
        >>> NEURONS = Registry("neuron", {"lif": LIF})
        >>> NEURONS.get("izhikevich")
        Traceback (most recent call last):
        RobustSNNError: unknown neuron 'izhikevich'; choose from: lif
    """

    def __init__(self, kind: str, entries: Union[Mapping[str, V], Iterable[Tuple[str, V]], None] = None, *,
                 normalize: Optional[Callable[[str], str]] = None, also: Iterable[str] = ()) -> None:
        self.kind = kind
        self._normalize = normalize
        self._also = tuple(also)
        self._entries: Dict[str, V] = {}
        items = entries.items() if isinstance(entries, Mapping) else (entries or ())
        for name, entry in items:
            self.register(name, entry)

    def register(self, name: str, entry: V = _MISSING) -> Any:
        """Add ``entry`` under ``name`` and return it; without ``entry``, a decorator that registers what it wraps.

        Raises:
            ValueError: ``name`` is already taken (a programming error, not a user's).
        """
        if entry is _MISSING:
            def decorator(obj: V) -> V:
                return self.register(name, obj)

            return decorator
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: Any, default: Any = _MISSING) -> Any:  # type: ignore[override]
        """The entry registered as ``name``, or a one-line :class:`RobustSNNError` listing the choices.

        With ``default`` given, an unknown name returns it instead (as ``dict.get`` does).
        """
        key = self._normalize(name) if self._normalize is not None and isinstance(name, str) else name
        try:
            return self._entries[key]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a config file
            if default is not _MISSING:
                return default
        raise RobustSNNError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.choices())}")

    def names(self) -> List[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def choices(self) -> List[str]:
        """Every name a user may give: the ``also`` names, then the registered ones."""
        return [*self._also, *self._entries]

    def __getitem__(self, name: str) -> V:
        return self._entries[name]

    def __setitem__(self, name: str, entry: V) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # unhashable
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, [{', '.join(self._entries)}])"
