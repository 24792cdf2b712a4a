"""Interactive web app (Gradio): draw a digit, watch the SNN decide, attack it and defend it.

``robust-snn app`` starts it (optional extra: ``pip install -e ".[app]"``). The
pure functions here (input decoding and preprocessing, the inference and attack
views, the verdict and worst-case texts) are testable without a browser;
:func:`build_app` wires them into a Gradio page and :mod:`robust_snn.app_figures`
draws the figures.

The attack panel is honest the way ``robust-snn attack`` is: by default it runs the
standard suite's first stage (APGD-CE through the wide ``fast_sigmoid:slope=5``
gradient, 100 steps), every figure and verdict comes from one forward pass of the
model as defended (blur in front, detector on), and it keeps the worst case over
every attack run on the current input.
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import RobustSNNError

log = logging.getLogger(__name__)

MAX_UPLOAD_PIXELS = 4096 * 4096
MAX_DRAWING_CHARS = 4_000_000
#: the largest L∞ budget the panel accepts (pixel scale 0-1)
MAX_EPS = 0.5
#: the wide surrogate of the standard suite's first stage (robust_snn.attacks.suite.WIDE)
WIDE = "fast_sigmoid:slope=5"
#: attack menu: value -> label. "apgd" with the WIDE gradient is the standard suite's first stage; "suite" is all of it.
APP_ATTACKS: Dict[str, str] = {
    "apgd": "APGD-CE, 100 steps (the standard suite's first stage)",
    "suite": "standard suite: all 7 stages with their own gradients, as robust-snn attack runs them",
    "pgd": "PGD, 20 steps",
    "fgsm": "FGSM, one step",
    "square": "Square, 1,000 queries, gradient-free",
    "pgd-tcc": "PGD-TCC: also evades the detector (switch it on)",
}
#: gradient menu: value -> label ("model": the model's own surrogate)
APP_SURROGATES: Dict[str, str] = {
    WIDE: "fast sigmoid, slope 5 (wide: the suite's first gradient)",
    "model": "the model's own surrogate",
    "fast_sigmoid:slope=10": "fast sigmoid, slope 10",
    "atan:alpha=2": "arctan, alpha 2",
    "straight_through": "straight-through",
    "ensemble": "ensemble of surrogates",
}
DEFAULT_ATTACK = "apgd"
DEFAULT_SURROGATE = WIDE
SQUARE_QUERIES = 1000  # the standard suite's Square stage
BLUR = "blur:sigma=1.0,kernel=5"
IMAGE_FORMATS = "PNG, JPEG, GIF, BMP, TIFF or WebP"


class AppInputError(RobustSNNError):
    """Bad input from the page (shown to the user, never raised past the handler)."""


# --- preprocessing -------------------------------------------------------------------------------------

def to_grayscale(image: Any) -> np.ndarray:
    """Any RGB/RGBA/L numpy image (or PIL image) -> float ``[H, W]`` in [0, 1], ink bright on dark (MNIST polarity)."""
    if image is None:
        raise AppInputError("no image: draw a digit, upload an image or pick a test image")
    if isinstance(image, dict):  # Gradio ImageEditor/Sketchpad value
        image = image.get("composite") if image.get("composite") is not None else image.get("background")
        if image is None:
            raise AppInputError("the drawing is empty: draw a digit first")
    arr = np.asarray(image)
    if arr.dtype == object or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise AppInputError(f"not an image (array of shape {arr.shape})")
    if arr.shape[0] * arr.shape[1] > MAX_UPLOAD_PIXELS:
        raise AppInputError(f"image too large ({arr.shape[1]}×{arr.shape[0]} pixels); the limit is 4096×4096")
    a = arr.astype(np.float64)
    if a.max() > 1.0:
        a = a / 255.0
    if a.ndim == 3:
        if a.shape[2] == 4:  # alpha-composite over white (a sketchpad's transparent background)
            alpha = a[..., 3:4]
            a = a[..., :3] * alpha + (1 - alpha)
            if float(alpha.max()) == 0.0:
                raise AppInputError("the drawing is empty: draw a digit first")
        a = a[..., :3].mean(-1) if a.shape[2] >= 3 else a[..., 0]
    if float(a.mean()) > 0.5:  # dark ink on a light background: invert to MNIST polarity
        a = 1.0 - a
    return a.clip(0, 1)


def mnist_preprocess(image: Any) -> torch.Tensor:
    """MNIST-style preprocessing: grayscale, crop to the ink, fit into 20×20, centre by centre of mass in 28×28.

    Shape: image -> ``[1, 28, 28]`` in [0, 1]. Raises :class:`AppInputError` for empty or unusable images.
    """
    from PIL import Image
    from scipy import ndimage

    g = to_grayscale(image)
    ink = g > 0.1 * max(float(g.max()), 1e-6)
    if float(g.max()) < 0.05 or ink.sum() < 3:
        raise AppInputError("the image is empty: draw a digit first")
    rows, cols = np.nonzero(ink)
    crop = g[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = crop.shape
    s = 20.0 / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    small = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((nw, nh), Image.LANCZOS), dtype=np.float64) / 255.0
    canvas = np.zeros((28, 28))
    top, left = (28 - nh) // 2, (28 - nw) // 2
    canvas[top: top + nh, left: left + nw] = small
    cy, cx = ndimage.center_of_mass(canvas)
    canvas = ndimage.shift(canvas, (14 - cy, 14 - cx), order=1, mode="constant")
    canvas = canvas.clip(0, 1)
    if canvas.max() > 0:
        canvas = canvas / canvas.max()
    return torch.tensor(canvas, dtype=torch.float32)[None]


def read_upload(path: Any) -> np.ndarray:
    """Decode an uploaded file into an RGBA array, with one clear message for anything that is not a readable image.

    Only the file's own name appears in messages (never the server's temporary path).
    """
    from PIL import Image

    if not path:
        raise AppInputError("no file: choose an image file to upload")
    name = os.path.basename(str(path))
    try:
        with Image.open(str(path)) as im:
            w, h = im.size
            if w * h > MAX_UPLOAD_PIXELS:
                raise AppInputError(f"{name} is too large ({w}×{h} pixels); the limit is 4096×4096")
            arr = np.asarray(im.convert("RGBA"))
    except AppInputError:
        raise
    except Image.DecompressionBombError:
        raise AppInputError(f"{name} is too large; the limit is 4096×4096 pixels") from None
    except (OSError, ValueError, SyntaxError):
        raise AppInputError(f"{name} is not an image the app can read; upload a {IMAGE_FORMATS} file") from None
    return arr


def decode_drawing(value: Any) -> np.ndarray:
    """The drawing canvas's value (a ``data:image/png;base64,...`` URL; empty when cleared) -> RGBA array."""
    from PIL import Image

    if not value:
        raise AppInputError("the canvas is empty: draw a digit")
    text = str(value)
    prefix = "data:image/png;base64,"
    if not text.startswith(prefix) or len(text) > MAX_DRAWING_CHARS:
        raise AppInputError("the drawing could not be read: clear the canvas and draw again")
    try:
        with Image.open(io.BytesIO(base64.b64decode(text[len(prefix):], validate=True))) as im:
            if im.size[0] * im.size[1] > MAX_UPLOAD_PIXELS:
                raise ValueError("too large")
            return np.asarray(im.convert("RGBA"))
    except (OSError, ValueError, binascii.Error, Image.DecompressionBombError):
        raise AppInputError("the drawing could not be read: clear the canvas and draw again") from None


def _number(value: Any, what: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise AppInputError(f"{what}: enter a number")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise AppInputError(f"{what} must be a finite number, got {value!r}")
    return v


def check_eps(value: Any) -> float:
    """The eps box's value as a budget in [0, MAX_EPS], or a message saying what is allowed."""
    v = _number(value, "eps")
    if not 0.0 <= v <= MAX_EPS:
        raise AppInputError(f"eps must be between 0 and {MAX_EPS:g} (L∞ on the 0-1 pixel scale), got {v:g}")
    return v


def check_whole(value: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in ``[lo, hi]`` (2.0 is fine, 2.5 is not), or a message saying what is allowed."""
    v = _number(value, what)
    if not v.is_integer():
        raise AppInputError(f"{what} must be a whole number from {lo} to {hi}, got {v:g}")
    if not lo <= v <= hi:
        raise AppInputError(f"{what} must be between {lo} and {hi}, got {int(v)}")
    return int(v)


# --- model views -------------------------------------------------------------------------------------

@dataclass
class AppModel:
    """The model behind the app, with its test split and detectors (one per blur setting) loaded on first use."""

    model: torch.nn.Module
    data_dir: Optional[str] = None
    _detectors: Dict[bool, Any] = field(default_factory=dict)
    _test: Any = None
    classes: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.model.config.get("input", "image") == "events":
            raise RobustSNNError("the app draws and attacks images; this checkpoint takes event tensors (input = 'events'): "
                                 "use robust-snn attack --attack flip-greedy,flip-random for it")
        self.model.eval()
        self.classes = [str(c) for c in self.model.config.get("classes", range(self.model.config["num_classes"]))]

    @property
    def num_steps(self) -> int:
        return int(self.model.num_steps)

    def test_image(self, index: Any) -> Tuple[torch.Tensor, int, int]:
        """Test image by index: ``(x [1, 28, 28], true label, index)``."""
        from .data import load_split

        if self._test is None:
            self._test = load_split(self.model.config["dataset"], "test", data_dir=self.data_dir)
        x, y = self._test
        i = check_whole(index, "the test image index", 0, len(x) - 1)
        return x[i], int(y[i]), i

    def defended(self, blur: bool, detector: bool) -> Any:
        """The model behind the chosen defenses (a :class:`~robust_snn.defenses.Defended`)."""
        from .defenses.registry import build_defended, calibration_split

        pre = [BLUR] if blur else []
        det = None
        if detector:
            if blur not in self._detectors:
                # calibrated on what it will see: held-out training images (else the test split's tail), blurred if blur is on
                _, _, calib, _ = calibration_split(self.model, self.model.config["dataset"], n=500, limit=1, data_dir=self.data_dir)
                self._detectors[blur] = build_defended(self.model, pre, "tcc:fpr=0.05", calibration=calib).detector
            det = self._detectors[blur]
        d = build_defended(self.model, pre)
        d.detector = det
        return d


def margin(logits: torch.Tensor, cls: Optional[int] = None) -> float:
    """Spike-count margin: top-1 minus top-2 logit, or ``logit[cls]`` minus the best other class."""
    if cls is None:
        top = logits.topk(2).values
        return float(top[0] - top[1])
    other = logits.clone()
    other[cls] = float("-inf")
    return float(logits[cls] - other.max())


def infer_view(app: AppModel, x: torch.Tensor, *, timestep: Optional[int] = None) -> Dict[str, Any]:
    """Prediction, trace and the stages figure for one processed image ``[1, 28, 28]`` (the undefended model)."""
    from .app_figures import stages_figure
    from .visualization import trace

    tr = trace(app.model, x)
    T = tr.rec.spikes[-1].shape[0]
    t = T // 2 if timestep is None else int(min(max(0, timestep), T - 1))
    return {"prediction": tr.prediction, "label": app.classes[tr.prediction], "margin": margin(tr.logits),
            "counts": tr.logits.tolist(), "figure": stages_figure(tr, timestep=t, classes=app.classes), "trace": tr, "timestep": t}


def prediction_markdown(app: AppModel, v: Dict[str, Any], *, source: str, label: Optional[int]) -> str:
    """The text under the input: prediction, the true label when known, margin and counts."""
    n = app.classes
    lines = [f"### Prediction: {v['label']}"]
    if label is not None:
        verdict = "correct" if v["prediction"] == label else f"**wrong**: the network says {v['label']}"
        lines.append(f"{source} · true label **{n[label]}** · {verdict}")
    else:
        lines.append(f"{source} (no true label)")
    lines.append(f"spike-count margin {v['margin']:.0f} · output spikes per class: "
                 + ", ".join(f"{n[k]}: {c:.0f}" for k, c in enumerate(v["counts"])))
    return "\n\n".join(lines)


def defense_name(blur: bool, detector: bool) -> str:
    """How the page names a defense setting ("" for none)."""
    return " + ".join([p for p, on in (("blur", blur), ("detector", detector)) if on])


@dataclass(frozen=True)
class AttackRecord:
    """One attack (or suite stage) run on the current input, judged by the defended model's forward pass."""

    attack: str
    eps: float
    defense: str
    target: int  # the class the attack tries to move away from: the true label, else the clean prediction
    clean_prediction: int
    prediction: int
    rejected: Optional[bool] = None  # by the detector (None: no detector)

    @property
    def broken(self) -> bool:
        return self.prediction != self.target

    @property
    def severity(self) -> int:
        """2: misclassified and accepted, 1: misclassified but rejected by the detector, 0: held."""
        return 0 if not self.broken else (1 if self.rejected else 2)

    def outcome(self, classes: Sequence[str]) -> str:
        if not self.broken:
            return "held"
        if self.clean_prediction != self.target:
            how = f"misclassified without attack ({classes[self.prediction]})"
        else:
            how = f"broken: {classes[self.prediction]}"
        return how + (", rejected by the detector" if self.rejected else "")


def _row_label(row: Dict[str, Any]) -> str:
    name = str(row["attack"])
    if "[" in name or row.get("gradient_free") or row.get("surrogate") in (None, "model"):
        return name
    return f"{name}[{row['surrogate']}]"


def attack_view(app: AppModel, x: torch.Tensor, *, attack: str = DEFAULT_ATTACK, eps: float = 0.1,
                surrogate: str = DEFAULT_SURROGATE, blur: bool = False, detector: bool = False,
                label: Optional[int] = None) -> Dict[str, Any]:
    """Attack one image ``[1, 28, 28]`` adaptively through the chosen defenses and describe the outcome.

    Every prediction, score and figure comes from one forward pass per image of the model as defended (the
    blurred view when blur is on). With ``attack="suite"`` the standard suite runs as a cascade (a stage runs only
    while the decision holds) and the example shown is the worst one: misclassified and accepted by the detector,
    then misclassified, else the one closest to breaking the decision.

    Returns:
        dict with ``clean``/``adversarial`` traces, predictions, ``target``, ``records`` (one
        :class:`AttackRecord` per attack or stage), ``shown`` (the record shown), ``x_adv``, ``linf``,
        ``figures`` (:class:`~robust_snn.app_figures.AppFigure` by name), detector scores when on, ``seconds``.
    """
    from .app_figures import attack_images_figure, detector_figure, raster_figure, vote_figure
    from .attacks import evaluate
    from .visualization import trace

    if attack not in APP_ATTACKS:
        raise AppInputError(f"unknown attack {attack!r}; choose from: {', '.join(APP_ATTACKS)}")
    if surrogate not in APP_SURROGATES:
        raise AppInputError(f"unknown attack gradient {surrogate!r}; choose from: {', '.join(APP_SURROGATES)}")
    eps = check_eps(eps)
    if attack == "pgd-tcc" and not detector:
        raise AppInputError("PGD-TCC attacks the detector: switch the temporal-consistency detector on first")
    t0 = time.perf_counter()
    target_model = app.defended(blur, detector) if (blur or detector) else app.model
    defense = defense_name(blur, detector)

    def view(img: torch.Tensor) -> torch.Tensor:  # what the classifier behind the defenses sees, [1, 28, 28]
        with torch.no_grad():
            return target_model.preprocess_input(img[None])[0] if blur else img

    def score(v: torch.Tensor) -> float:
        with torch.no_grad():
            return float(target_model.detector.score(v[None].to(next(app.model.parameters()).device)))

    clean = trace(app.model, view(x))
    y = clean.prediction if label is None else int(label)
    if attack == "suite":  # exactly as robust-snn attack runs it by default: every stage with its own gradient
        kw: Dict[str, Any] = {"suite": "standard", "surrogate": None}
    else:
        kw = {"attacks": [attack], "surrogate": None if surrogate == "model" else surrogate, "queries": SQUARE_QUERIES}
    res = evaluate(target_model, x[None], torch.tensor([y]), eps=[eps], checks=False, keep_examples=True,
                   adaptive_detector_attack=False, **kw)
    thr = float(target_model.detector.threshold) if detector else None
    records: List[AttackRecord] = []
    cands: List[Tuple[AttackRecord, torch.Tensor, Any]] = []
    # a cascade's later stages attack only what is still robust: the stages that did not run are not records
    rows = [row for k, row in enumerate(res.rows) if k == 0 or row.get("attacked", 1) > 0]
    for row in rows:
        x_adv = res.example(row["attack"], eps)[0].cpu()
        adv = trace(app.model, view(x_adv))
        rejected = (score(adv.x[0]) > thr) if detector else None
        rec = AttackRecord(_row_label(row), eps, defense, y, clean.prediction, adv.prediction, rejected)
        records.append(rec)
        cands.append((rec, x_adv, adv))
    # the example shown: the worst (broken and accepted, then broken), else the one closest to breaking
    rec, x_adv, adv = max(cands, key=lambda c: (c[0].severity, -margin(c[2].logits, y)))
    out: Dict[str, Any] = {"clean": clean, "adversarial": adv, "clean_prediction": clean.prediction,
                           "adversarial_prediction": adv.prediction, "adversarial_margin": margin(adv.logits),
                           "target": y, "label": label, "records": records, "shown": rec, "x_adv": x_adv,
                           "linf": float((x_adv - x).abs().max()), "eps": eps, "defense": defense, "attack": attack,
                           "surrogate": surrogate}
    figures = {"images": attack_images_figure(clean, adv, x[0].numpy(), x_adv[0].numpy(), eps=eps, defense="blur" if blur else "",
                                              label=label, classes=app.classes),
               "vote": vote_figure(clean, adv, label=label, classes=app.classes),
               "raster": raster_figure(clean, adv)}
    if detector:
        s_clean, s_adv = score(clean.x[0]), score(adv.x[0])
        out.update({"detector_threshold": thr, "score_clean": s_clean, "score_adversarial": s_adv,
                    "rejected": s_adv > thr, "clean_rejected": s_clean > thr})
        figures["detector"] = detector_figure(s_clean, s_adv, thr)
    out["figures"] = figures
    out["seconds"] = time.perf_counter() - t0
    return out


def attack_description(attack: str, surrogate: str, model_surrogate: str) -> str:
    """One phrase for the attack and its gradient, e.g. ``APGD-CE, 100 steps, through fast_sigmoid:slope=5``."""
    if attack == "suite":
        return "the standard suite (7 stages, each with its own gradient; a stage runs only if the decision still holds)"
    what = APP_ATTACKS[attack].split(" (")[0]
    if attack == "square":
        return what
    grad = model_surrogate if surrogate == "model" else surrogate
    return f"{what}, through the gradient {grad}"


def verdict_markdown(app: AppModel, r: Dict[str, Any], *, source: str) -> str:
    """The attack panel's headline: the adversarial prediction of the defended model and how it was obtained."""
    n = app.classes
    clean, adv, y = r["clean_prediction"], r["adversarial_prediction"], r["target"]
    seen = " after blur" if "blur" in r["defense"] else ""
    if clean != y:
        status = f"the clean input is already misclassified{seen} (true label {n[y]}, predicted {n[clean]}): nothing to attack"
    elif adv != y:
        status = f"the attack **changed** the decision (clean{seen}: {n[clean]})"
    else:
        status = f"the decision **held** (clean{seen}: {n[clean]})"
        if r["linf"] == 0:
            status += "; no perturbation lowered the margin, so the clean image is shown"
    lines = [f"### Adversarial prediction: {n[adv]}", f"{status} · L∞ {r['linf']:.3f} · spike-count margin {r['adversarial_margin']:.0f}"]
    shown = r["shown"]
    lines.append(f"{attack_description(r['attack'], r['surrogate'], str(app.model.config.get('surrogate', 'model')))} · eps {r['eps']:g} · "
                 f"defense: {r['defense'] or 'none'} · on {source} · {r['seconds']:.1f} s"
                 + (f" · shown: {shown.attack}" if len(r["records"]) > 1 else ""))
    if "rejected" in r:
        lines.append(f"detector (higher score = more suspicious): adversarial {r['score_adversarial']:.2f} vs threshold "
                     f"{r['detector_threshold']:.2f} → **{'REJECTED' if r['rejected'] else 'accepted'}**; clean {r['score_clean']:.2f} → "
                     f"{'rejected' if r['clean_rejected'] else 'accepted'}"
                     + ("" if r["attack"] == "pgd-tcc" else " · this attack ignored the detector; PGD-TCC also evades it"))
    return "\n\n".join(lines)


def worst_case_markdown(history: Sequence[AttackRecord], *, eps: float, defense: str, classes: Sequence[str],
                        max_rows: int = 8) -> str:
    """The model's worst case on this input over every attack run on it at this defense and at most this eps.

    An example found at a smaller eps lies inside the larger budget, so it counts there too.
    """
    if not history:
        return ""
    setting = f"eps ≤ {eps:g}, defense: {defense or 'none'}"
    rel = [r for r in history if r.defense == defense and r.eps <= eps + 1e-9]
    if not rel:
        head = f"**Worst case on this input** ({setting}): no attack run at these settings yet."
    else:
        worst = max(rel, key=lambda r: r.severity)
        kinds = sorted({r.attack for r in rel})
        if worst.broken:
            head = (f"**Worst case on this input** ({setting}) over {len(rel)} attack run(s): **{worst.outcome(classes)}**, "
                    f"by {worst.attack} at eps {worst.eps:g}.")
        else:
            head = (f"**Worst case on this input** ({setting}): **held** against all {len(rel)} attack run(s) "
                    f"({', '.join(kinds)}). That is no proof: try the standard suite (attack menu), as robust-snn attack does.")
    rows = ["| attack | eps | defense | prediction | outcome |", "|---|---|---|---|---|"]
    for r in list(history)[-max_rows:][::-1]:
        rows.append(f"| {r.attack} | {r.eps:g} | {r.defense or 'none'} | {classes[r.prediction]} | {r.outcome(classes)} |")
    more = f"\n\n({len(history) - max_rows} earlier runs not shown)" if len(history) > max_rows else ""
    return head + "\n\nAttacks run on this input, newest first:\n\n" + "\n".join(rows) + more


# --- the page ------------------------------------------------------------------------------------------

_CANVAS_HTML = """
<div class="rsnn-pad">
  <canvas width="280" height="280" aria-label="drawing canvas: draw a digit with the mouse, a pen or a finger"></canvas>
  <div class="rsnn-pad-row"><button type="button" class="rsnn-clear">Clear canvas</button>
  <span>draw with the mouse, a pen or a finger; the network answers after each stroke</span></div>
</div>
"""
_CANVAS_CSS = """
.rsnn-pad canvas { width: 280px; height: 280px; background: #000; touch-action: none; cursor: crosshair; user-select: none;
                   -webkit-user-select: none; display: block; border-radius: 4px; }
.rsnn-pad-row { display: flex; gap: 10px; align-items: center; margin-top: 8px; font-size: 14px; }
.rsnn-clear { padding: 4px 12px; border: 1px solid #999; border-radius: 4px; background: #f3f3f3; cursor: pointer;
               white-space: nowrap; font-size: 14px; font-weight: 600; flex: none; }
"""
# The pen is the only tool, so drawing works on first contact and after clearing; each stroke sends the canvas as a PNG.
_CANVAS_JS = """
const c = element.querySelector('canvas');
const ctx = c.getContext('2d');
function blank() { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, c.width, c.height); }
blank();
if (typeof props.value === 'string' && props.value.startsWith('data:image/png')) {
  const im = new Image(); im.onload = () => ctx.drawImage(im, 0, 0); im.src = props.value;
}
let down = false, last = null;
function pos(e) { const r = c.getBoundingClientRect(); return [(e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height]; }
function line(a, b) { ctx.strokeStyle = '#fff'; ctx.lineWidth = 20; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
  ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke(); }
c.addEventListener('pointerdown', (e) => { e.preventDefault(); down = true; last = pos(e); c.setPointerCapture(e.pointerId); line(last, last); });
c.addEventListener('pointermove', (e) => { if (!down) return; e.preventDefault(); const p = pos(e); line(last, p); last = p; });
function finish() { if (!down) return; down = false; props.value = c.toDataURL('image/png'); trigger('change'); }
c.addEventListener('pointerup', finish);
c.addEventListener('pointercancel', finish);
element.querySelector('.rsnn-clear').addEventListener('click', () => { blank(); props.value = ''; trigger('change'); });
"""


def _settings(attack: Any, eps: Any, surrogate: Any, blur: Any, det: Any) -> Tuple[Any, ...]:
    return (attack, eps, surrogate if attack not in ("square", "suite") else None, bool(blur), bool(det))


def build_app(app: AppModel):
    """The Gradio Blocks page."""
    import gradio as gr

    from .app_figures import stages_figure

    T = app.num_steps
    n = app.classes

    def fail(e: Exception) -> str:
        return f"**⚠ {e}**"

    no_attack = "No attack on this input yet: choose the settings and press **Attack**."
    empty_panel = ("", "", "", "", "")  # worst case, images, vote, raster, detector

    def new_input(x: Optional[torch.Tensor], label: Optional[int], source: str, t: Any, error: Optional[Exception] = None):
        """Everything an input change updates: the input's view, and an attack panel cleared of the old input's results."""
        if x is None:
            return (None, None, "", None, fail(error), "", [], None, "No input to attack: see the message under the input.") + empty_panel
        v = infer_view(app, x, timestep=int(t))
        md = prediction_markdown(app, v, source=source, label=label)
        return (x, label, source, v["trace"], md, v["figure"].html(), [], None, no_attack) + empty_panel

    def from_drawing(value, t):
        try:
            x = mnist_preprocess(decode_drawing(value))
        except RobustSNNError as e:
            return new_input(None, None, "", t, e)
        return new_input(x, None, "your drawing", t)

    def from_upload(path, t):
        try:
            x = mnist_preprocess(read_upload(path))
        except RobustSNNError as e:
            return new_input(None, None, "", t, e)
        return new_input(x, None, f"the upload {os.path.basename(str(path))}", t)

    def from_index(index, t):
        try:
            x, y, i = app.test_image(index)
        except RobustSNNError as e:
            return new_input(None, None, "", t, e)
        return new_input(x, y, f"MNIST test image {i}", t)

    def on_timestep(tr, t):  # gets the box's raw value (preprocess=False), so out-of-range values get the app's message
        try:
            ts = check_whole(t, "the time step", 0, T - 1)
        except AppInputError as e:
            return gr.update(), fail(e) + " (the figure still shows the last valid step)", gr.update()
        if tr is None:
            return gr.update(), "", ts
        return stages_figure(tr, timestep=ts, classes=n).html(), "", ts

    def run_attack(x, label, source, history, attack, eps, surrogate, blur, det):
        history = list(history or [])
        if x is None:
            return ("**⚠ no input yet: draw a digit, upload an image or load a test image first**", "", "", "", "", "", history, None)
        try:
            r = attack_view(app, x, attack=attack, eps=eps, surrogate=surrogate, blur=bool(blur), detector=bool(det), label=label)
        except RobustSNNError as e:  # nothing ran: the old figures go, the worst case so far stays
            return (f"**⚠ {e}: nothing was attacked**", gr.update(), "", "", "", "", history, None)
        history += r["records"]
        text = verdict_markdown(app, r, source=source)
        figs = r["figures"]
        html = [figs[k].html() if k in figs else "" for k in ("images", "vote", "raster", "detector")]
        worst = worst_case_markdown(history, eps=r["eps"], defense=r["defense"], classes=n)
        result = {"settings": _settings(attack, r["eps"], surrogate, blur, det), "text": text, "html": html}
        return (text, worst, *html, history, result)

    def on_settings(x, result, history, attack, eps, surrogate, blur, det):
        """A changed setting: out-of-range eps is said at once, an old result is marked out of date, the worst case follows."""
        notes: List[str] = []
        try:
            e: Optional[float] = check_eps(eps)
        except AppInputError as ex:
            notes.append(fail(ex))
            e = None
        if attack == "pgd-tcc" and not det:
            notes.append("**⚠ PGD-TCC attacks the detector: switch the temporal-consistency detector on**")
        worst = worst_case_markdown(history or [], eps=e, defense=defense_name(bool(blur), bool(det)), classes=n) if e is not None else gr.update()
        if not result:  # nothing shown to mark: say what is wrong, or that the input is waiting for an attack
            return "\n\n".join(notes) or (no_attack if x is not None else ""), worst, gr.update(), gr.update(), gr.update(), gr.update()
        if result["settings"] == _settings(attack, e, surrogate, blur, det):
            return "\n\n".join(notes + [result["text"]]), worst, *result["html"]
        stale = ("> **⚠ Out of date:** the settings changed since this result was computed (its settings are listed below); "
                 "press **Attack** to update it.")
        dim = [f'<div class="rsnn-stale" style="opacity:0.35" title="out of date">{h}</div>' if h else "" for h in result["html"]]
        return "\n\n".join(notes + [stale, result["text"]]), worst, *dim

    intro = ("# robust-snn: attack a spiking network\n"
             "Draw a digit (or upload an image, or load an MNIST test image), watch the spiking network decide step by step, "
             "then attack it and switch defenses on. The attack panel starts with the standard suite's first stage "
             f"(APGD-CE through the wide gradient `{WIDE}`) and keeps the worst case over every attack you run on the input.")
    with gr.Blocks(title="robust-snn: attack a spiking network", analytics_enabled=False) as demo:
        s_x, s_label, s_source, s_trace = gr.State(None), gr.State(None), gr.State(""), gr.State(None)
        s_history, s_result, s_t = gr.State([]), gr.State(None), gr.State(T // 2)  # s_t: the last valid time step
        gr.Markdown(intro)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=330):
                with gr.Tabs():
                    with gr.Tab("Draw", elem_id="tab-draw"):
                        sketch = gr.HTML(value="", html_template=_CANVAS_HTML, css_template=_CANVAS_CSS, js_on_load=_CANVAS_JS,
                                         elem_id="sketch")
                    with gr.Tab("Upload", elem_id="tab-upload"):
                        upload = gr.File(label=f"upload an image of a digit ({IMAGE_FORMATS})", file_count="single",
                                         type="filepath", elem_id="upload")
                    with gr.Tab("MNIST test image", elem_id="tab-test"):
                        index = gr.Number(value=0, label="test image index (0 to 9999)", elem_id="test-index")
                        load_btn = gr.Button("Load test image", elem_id="load-test")
                prediction = gr.Markdown("no input yet: draw a digit, upload an image or load a test image", elem_id="prediction")
            with gr.Column(scale=2):
                timestep = gr.Slider(0, T - 1, value=T // 2, step=1, label=f"time step t for panel (b), 0 to {T - 1}", elem_id="timestep")
                ts_note = gr.Markdown("", elem_id="timestep-note")
                stages = gr.HTML("", elem_id="stages")
        with gr.Column(elem_id="robustness-panel"):
            gr.Markdown("## Robustness")
            with gr.Row():
                attack = gr.Dropdown([(v, k) for k, v in APP_ATTACKS.items()], value=DEFAULT_ATTACK, label="attack", elem_id="attack-choice",
                                     scale=2)
                eps = gr.Number(value=0.1, step=0.01, label=f"eps: L∞ budget on the 0-1 pixel scale, 0 to {MAX_EPS:g}", elem_id="eps", scale=1)
                surrogate = gr.Dropdown([(v, k) for k, v in APP_SURROGATES.items()], value=DEFAULT_SURROGATE,
                                        label="attack gradient (surrogate)", elem_id="surrogate", scale=2)
                with gr.Column(scale=1, min_width=200):
                    blur = gr.Checkbox(False, label="Gaussian blur defense", elem_id="blur")
                    det = gr.Checkbox(False, label="temporal-consistency detector", elem_id="detector")
            attack_btn = gr.Button("Attack", variant="primary", elem_id="attack")
            adv_text = gr.Markdown("", elem_id="adv-prediction")
            worst = gr.Markdown("", elem_id="worst-case")
            adv_images = gr.HTML("", elem_id="adv-images")
            adv_vote = gr.HTML("", elem_id="adv-vote")
            adv_raster = gr.HTML("", elem_id="adv-raster")
            adv_detector = gr.HTML("", elem_id="adv-detector")

        # one queue for everything that reads the session or runs the model: events run in the order they happen
        q = {"concurrency_id": "model", "concurrency_limit": 1}
        panel = [adv_text, worst, adv_images, adv_vote, adv_raster, adv_detector]
        outs = [s_x, s_label, s_source, s_trace, prediction, stages, s_history, s_result] + panel
        sketch.change(from_drawing, [sketch, s_t], outs, trigger_mode="always_last", **q)
        upload.upload(from_upload, [upload, s_t], outs, **q)
        load_btn.click(from_index, [index, s_t], outs, **q)
        index.submit(from_index, [index, s_t], outs, **q)
        timestep.change(on_timestep, [s_trace, timestep], [stages, ts_note, s_t], trigger_mode="always_last", show_progress="hidden",
                        preprocess=False, **q)
        attack_btn.click(run_attack, [s_x, s_label, s_source, s_history, attack, eps, surrogate, blur, det],
                         [adv_text, worst, adv_images, adv_vote, adv_raster, adv_detector, s_history, s_result], **q)
        for ctl in (attack, eps, surrogate, blur, det):
            ctl.change(on_settings, [s_x, s_result, s_history, attack, eps, surrogate, blur, det], panel, trigger_mode="always_last",
                       show_progress="hidden", **q)
    return demo


def check_address(host: str, port: int) -> None:
    """Fail in one line, before the model loads, if the app cannot listen on ``host:port``."""
    import errno
    import socket

    if not 0 < port < 65536:
        raise RobustSNNError(f"--port must be in 1..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise RobustSNNError(f"--host {host!r} is not a valid address or host name ({getattr(e, 'strerror', None) or e}); "
                             f"use 127.0.0.1 (this machine only) or 0.0.0.0 (all interfaces)") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what the server itself sets
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise RobustSNNError(f"--port {port} is already in use on {host}; choose another --port") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise RobustSNNError(f"--host {host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0") from None
            if e.errno == errno.EACCES:
                raise RobustSNNError(f"--port {port} needs administrator rights on this machine; choose a port above 1023") from None
            raise RobustSNNError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --host or --port") from None


def launch(checkpoint: Optional[str] = None, *, host: str = "127.0.0.1", port: int = 7860, data_dir: Optional[str] = None,
           device: str = "auto") -> None:
    """Load the model and serve the app (blocks until interrupted)."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise RobustSNNError('the app needs Gradio: pip install -e ".[app]"  (or pip install "robust-snn[app]")') from None
    from .checkpoint import load_model

    torch.set_grad_enabled(True)
    app = AppModel(load_model(checkpoint, device=device), data_dir=data_dir)
    demo = build_app(app)
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(server_name=host, server_port=port, show_error=True, quiet=True)
    except OSError as e:
        raise RobustSNNError(f"cannot serve on {host}:{port}: {str(e).splitlines()[0]}") from None
