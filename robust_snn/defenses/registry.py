"""Build defenses from CLI/spec strings: ``blur:sigma=1.0,kernel=5``, ``quantize:bits=4``, ``denoise:window=1``, ``tcc:fpr=0.05``."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from ..errors import RobustSNNError
from ..registry import Registry
from ..specs import parse_params, split_spec
from .base import Defended, Detector, Preprocessor
from .blur import GaussianBlur
from .denoise import Denoise
from .quantize import Quantize
from .tcc import TemporalConsistencyDetector

#: defenses by spec name; their parameters are their constructors' keyword arguments
PREPROCESSORS: Registry[Callable[..., Preprocessor]] = Registry("defense", {
    "blur": GaussianBlur,
    "quantize": Quantize,
    "denoise": Denoise,
}, also=("none",))
DETECTORS: Registry[Type[Detector]] = Registry("detector", {
    "tcc": TemporalConsistencyDetector,
})


def make_preprocessor(spec: str) -> Optional[Preprocessor]:
    """A preprocessor from its spec; ``none`` gives ``None``."""
    name, raw = split_spec(spec, what="defense")
    if name == "none" and not raw:
        return None
    cls = PREPROCESSORS.get(name)
    return cls(**parse_params(name, raw, cls, spec=spec, what="defense"))


def parse_detector_spec(spec: str) -> tuple:
    """``"tcc:fpr=0.05"`` -> ``("tcc", {"fpr": 0.05})``, checking the name and parameter names."""
    name, raw = split_spec(spec, what="detector")
    return name, parse_params(name, raw, DETECTORS.get(name), spec=spec, what="detector")


def make_detector(spec: str, model: nn.Module) -> Detector:
    """An uncalibrated detector on ``model`` (call ``calibrate``)."""
    name, params = parse_detector_spec(spec)
    return DETECTORS.get(name)(model, **params)


def build_defended(model: nn.Module, defenses: Sequence[str] = (), detector: Optional[str] = None,
                   calibration: Optional[torch.Tensor] = None) -> Defended:
    """Wrap ``model`` in preprocessors (in order) and an optional detector calibrated on ``calibration``.

    The detector watches the preprocessed input's spike trains, so it is built on
    the preprocessors + model pipeline.
    """
    pres = [p for p in (make_preprocessor(s) for s in defenses) if p is not None]
    dev = next(model.parameters()).device
    pres = [p.to(dev) for p in pres]
    defended = Defended(model, preprocessors=pres)
    if detector is not None:
        det = make_detector(detector, model)
        if calibration is None:
            raise RobustSNNError("a detector needs clean calibration images")
        det.calibrate(defended.preprocess_input(calibration.to(dev)).cpu() if pres else calibration)
        defended.detector = det
    return defended


def held_out_calibration(model: nn.Module, dataset: str, *, data_dir: Optional[str] = None, n: int = 1000) -> Optional[torch.Tensor]:
    """Clean images the checkpoint never trained on: its own held-out validation split of the training data.

    Uses the checkpoint recipe's ``seed``, ``val_split`` and ``limit`` to rebuild
    exactly the split training held out. Returns ``None`` when the training split
    is not available locally (no download is attempted) or nothing was held out.
    """
    from ..data import load_split, split_validation

    recipe = getattr(model, "checkpoint_recipe", {}) or {}
    try:
        x, y = load_split(dataset, "train", data_dir=data_dir, download=False, limit=recipe.get("limit"))
    except RobustSNNError:
        return None
    _, val = split_validation(x, y, float(recipe.get("val_split", 0.05)), seed=int(recipe.get("seed", 0)))
    if val is None:
        return None
    return val[0][:n]


def calibration_split(model: nn.Module, dataset: str, *, n: int, split: str = "test", limit: Optional[int] = None,
                      data_dir: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[str]]:
    """Evaluation images and *disjoint* clean images to calibrate a detector on.

    The calibration images are the checkpoint's own held-out training images
    (:func:`held_out_calibration`) when the training split is local; otherwise the last
    ``n`` images of ``split``, which are then left out of the evaluation.

    Returns:
        ``(x, y, calibration, note)``: the first ``limit`` evaluation images and labels,
        ``n`` calibration images, and a note for the user when the split's tail was used.
    """
    from ..data import load_split

    if n < 20:
        raise RobustSNNError(f"the detector calibration set needs at least 20 images (--calibration-size), got {n}")
    calib = held_out_calibration(model, dataset, data_dir=data_dir, n=n)
    if calib is not None:
        x, y = load_split(dataset, split, data_dir=data_dir, limit=limit)
        return x, y, calib, None
    x_all, y_all = load_split(dataset, split, data_dir=data_dir)
    keep = len(x_all) - n if limit is None else limit
    if keep < 1 or keep + n > len(x_all):
        raise RobustSNNError(f"{keep if limit is not None else 'all'} evaluation images plus {n} calibration images exceed the "
                             f"{len(x_all)} {split} images (no held-out training images for this checkpoint, so the detector is "
                             f"calibrated on the split's tail, disjoint from the evaluation); lower the limit or the calibration size, "
                             f"or give --data-dir with the training split")
    note = (f"no held-out training images for this checkpoint (trained on the whole split, or the split is not local): the detector "
            f"is calibrated on the last {n} {split} images, which are left out of the evaluation")
    return x_all[:keep], y_all[:keep], x_all[-n:], note
