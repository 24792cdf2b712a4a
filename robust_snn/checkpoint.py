"""Safe checkpoints: one ``.pt`` file of tensors and plain Python types only.

Loading uses ``torch.load(..., weights_only=True)``, so a file can never run
code when opened.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .errors import RobustSNNError
from .models import SpikingClassifier, check_num_steps, full_config
from .utils import atomic_path, resolve_device, versions

log = logging.getLogger(__name__)

FORMAT = "robust-snn-checkpoint"
FORMAT_VERSION = 1
PACKAGE_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
REPO_CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_NAME = "csnn-mnist.pt"


def default_checkpoint() -> Path:
    """Path of the shipped default checkpoint (``checkpoints/csnn-mnist.pt``)."""
    for folder in (REPO_CHECKPOINTS, PACKAGE_CHECKPOINTS):
        if (folder / DEFAULT_NAME).is_file():
            return folder / DEFAULT_NAME
    raise RobustSNNError(f"the default checkpoint {DEFAULT_NAME} is not installed; pass --checkpoint PATH")


def save_checkpoint(
    path: str | os.PathLike,
    model: SpikingClassifier,
    *,
    metrics: Optional[Dict[str, Any]] = None,
    recipe: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a checkpoint atomically; returns its path."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metrics": dict(metrics or {}),
        "recipe": dict(recipe or {}),
        "versions": versions(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_file(path: str | os.PathLike, *, what: str = "checkpoint", fix: str = "re-download or re-create it") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors for unsafe, corrupt or truncated files.

    Opening a file never executes code: a file that holds Python objects other than
    tensors and plain types is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise RobustSNNError(f"{what} not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "GLOBAL" in msg or "Unsupported global" in msg or "unsupported global" in msg.lower():
            raise RobustSNNError(
                f"{p} is not a safe robust-snn {what}: it contains Python objects that would run code when loaded; refusing to load it"
            ) from None
        raise RobustSNNError(f"{p} is corrupt or not a {what} (unpickling failed)") from None
    except Exception as e:  # a damaged file can make the unpickler raise anything (KeyError, struct.error, ...)
        text = str(e)
        if "central directory" in text or "zip archive" in text or isinstance(e, (EOFError, zipfile.BadZipFile)):
            reason = "truncated or not a torch file"
        elif isinstance(e, (RuntimeError, ValueError, OSError)) and text.strip():
            first = text.strip().splitlines()[0]
            reason = first if len(first) <= 120 else first[:117] + "..."
        else:  # KeyError(174812789) from the unpickler says nothing to a user
            reason = "unreadable"
        raise RobustSNNError(f"{p} is corrupt or not a {what} ({reason}); {fix}") from None


def read_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Read and validate a checkpoint file without building the model."""
    p = Path(path)
    payload = load_file(p)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RobustSNNError(f"{p} is not a robust-snn checkpoint (no '{FORMAT}' header)")
    if int(payload.get("format_version", -1)) > FORMAT_VERSION:
        raise RobustSNNError(
            f"{p} has checkpoint format {payload.get('format_version')}, newer than this robust-snn supports ({FORMAT_VERSION}); upgrade robust-snn"
        )
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise RobustSNNError(f"{p} is not a valid robust-snn checkpoint (missing {key})")
    return payload


def model_from_payload(payload: Dict[str, Any], *, source: str = "checkpoint") -> SpikingClassifier:
    """Build a model from a checkpoint payload and load its weights strictly."""
    try:
        model = SpikingClassifier(full_config(**payload["config"]))
    except RobustSNNError as e:
        raise RobustSNNError(f"{source}: invalid model config: {e}") from None
    bad = [k for k, v in payload["state_dict"].items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RobustSNNError(f"{source}: weights contain NaN or inf ({', '.join(bad[:3])}); the training diverged or the file "
                             f"was damaged: retrain (e.g. with a lower --lr) or use another checkpoint")
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise RobustSNNError(f"{source}: weights do not match its model config ({detail[:200]})") from None
    return model


def load_model(
    checkpoint: Optional[str | os.PathLike] = None,
    *,
    device: str | torch.device = "cpu",
    num_steps: Optional[int] = None,
) -> SpikingClassifier:
    """Load a checkpoint as a :class:`SpikingClassifier` in eval mode.

    Args:
        checkpoint: path, or ``None`` for the shipped default (``csnn-mnist.pt``).
        device: ``cpu``, ``cuda``, ``mps`` or ``auto``.
        num_steps: override the number of time steps T.
    """
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    payload = read_checkpoint(path)
    model = model_from_payload(payload, source=str(path))
    if num_steps is not None:
        model.num_steps = check_num_steps(num_steps)
    model.checkpoint_path = str(path)  # type: ignore[attr-defined]
    model.checkpoint_metrics = dict(payload.get("metrics", {}))  # type: ignore[attr-defined]
    model.checkpoint_recipe = dict(payload.get("recipe", {}))  # type: ignore[attr-defined]
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(dev).eval()
