"""The one spec language of robust-snn: ``name:key=value,key=value``.

Surrogates (``fast_sigmoid:slope=5``), defenses (``blur:sigma=1.0,kernel=5``) and detectors
(``tcc:fpr=0.05``) are all written this way. :func:`split_spec` does the syntax;
:func:`keyword_params` reads the allowed keys and their types from the constructor's
signature (no table repeats it); :func:`parse_value` parses numbers and refuses NaN and
infinities, in one place. Ranges stay with the classes that know them.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import RobustSNNError


def split_spec(text: str, *, what: str) -> Tuple[str, Dict[str, str]]:
    """``"blur:sigma=1.0,kernel=5"`` -> ``("blur", {"sigma": "1.0", "kernel": "5"})`` (name lower-cased, stripped)."""
    text = str(text).strip()
    if not text:
        raise RobustSNNError(f"empty {what} spec")
    name, _, rest = text.partition(":")
    raw: Dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not k.strip() or not v.strip():
            raise RobustSNNError(f"bad {what} parameter {item!r} in {text!r}; expected key=value")
        raw[k.strip()] = v.strip()
    return name.strip().lower(), raw


def split_spec_list(text: str) -> List[str]:
    """``"fgsm,pgd:steps=50,step_scale=2,apgd"`` -> ``["fgsm", "pgd:steps=50,step_scale=2", "apgd"]``.

    A comma separates specs, except before ``key=value`` (a parameter of the spec before it); used for
    attack lists and gradient lists alike.
    """
    out: List[str] = []
    for part in (t.strip() for t in str(text).split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and out:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


def parse_value(value: str, *, key: str, spec: str, what: str,
                range_: Optional[Tuple[float, float, bool]] = None) -> Any:
    """A number (int when written as one, else float; NaN and infinities refused) or the text itself.

    With ``range_ = (lo, hi, lo_inclusive)`` the value must be a number in that interval (``hi`` exclusive).
    """
    try:
        num = float(value)
    except ValueError:
        if range_ is not None:
            raise RobustSNNError(f"{what} parameter {key} must be a number, got {value!r}") from None
        return value
    if range_ is not None:
        lo, hi, lo_ok = range_
        if not math.isfinite(num) or not (num >= lo if lo_ok else num > lo) or not num < hi:
            raise RobustSNNError(f"{what} parameter {key} in {spec!r} must be a finite number in "
                                 f"{'[' if lo_ok else '('}{lo:g}, {hi:g}), got {value!r}")
        return num
    if not math.isfinite(num):
        raise RobustSNNError(f"{what} parameter {key} in {spec!r} must be a finite number, got {value!r}")
    return int(num) if num.is_integer() and "." not in value and "e" not in value.lower() else num


def keyword_params(fn: Callable[..., Any], *, skip: Tuple[str, ...] = ("self", "model")) -> Dict[str, inspect.Parameter]:
    """The keyword parameters a constructor (or function) takes, by name."""
    params = inspect.signature(fn).parameters
    return {k: p for k, p in params.items()
            if k not in skip and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def parse_params(name: str, raw: Dict[str, str], fn: Callable[..., Any], *, spec: str, what: str,
                 allowed: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Parse and check ``raw`` against ``fn``'s keyword parameters (or ``allowed``: name -> default).

    Unknown keys give one line listing the allowed ones; numbers must be finite; a
    parameter whose default is an int must be given as a whole number.
    """
    defaults = allowed if allowed is not None else {k: p.default for k, p in keyword_params(fn).items()}
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise RobustSNNError(f"unknown parameter(s) for {what} {name}: {', '.join(unknown)}; allowed: "
                             f"{', '.join(sorted(defaults)) or 'none'}")
    out: Dict[str, Any] = {}
    for k, v in raw.items():
        value = parse_value(v, key=k, spec=spec, what=what)
        default = defaults[k]
        if isinstance(default, bool):
            if str(v).lower() not in ("true", "false", "1", "0"):
                raise RobustSNNError(f"{what} parameter {k} in {spec!r} must be true or false, got {v!r}")
            out[k] = str(v).lower() in ("true", "1")
        elif default is None or isinstance(default, str):
            out[k] = value
        elif isinstance(value, str):
            raise RobustSNNError(f"{what} parameter {k} in {spec!r} must be a number, got {v!r}")
        elif isinstance(default, int) and not (isinstance(value, int) or value.is_integer()):
            raise RobustSNNError(f"{what} parameter {k} in {spec!r} must be a whole number, got {v!r}")
        else:
            out[k] = type(default)(value) if isinstance(default, (int, float)) else value
    return out
