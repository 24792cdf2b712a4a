"""Interactive web app (Gradio): draw a digit, watch the SNN decide, attack it and defend it.

``robust-snn app`` starts it (optional extra: ``pip install -e ".[app]"``). The
pure functions here (preprocessing, inference and attack views) are testable
without a browser; :func:`build_app` wires them into a Gradio page.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .errors import RobustSNNError
from .plotting import plt

log = logging.getLogger(__name__)

MAX_UPLOAD_PIXELS = 4096 * 4096
APP_ATTACKS = ("fgsm", "pgd", "apgd", "square")
APP_SURROGATES = ("model", "fast_sigmoid:slope=5", "atan:alpha=2", "straight_through", "ensemble")


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


# --- model views -------------------------------------------------------------------------------------

@dataclass
class AppModel:
    """The model behind the app, with cached defenses."""

    model: torch.nn.Module
    data_dir: Optional[str] = None
    _detector: Any = None
    _test: Any = None
    classes: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model.eval()
        self.classes = [str(c) for c in self.model.config.get("classes", range(self.model.config["num_classes"]))]

    def test_image(self, index: Any) -> Tuple[torch.Tensor, int]:
        from .data import load_split

        if self._test is None:
            self._test = load_split(self.model.config["dataset"], "test", data_dir=self.data_dir)
        x, y = self._test
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise AppInputError(f"the test image index must be a whole number, got {index!r}") from None
        if not 0 <= i < len(x):
            raise AppInputError(f"the test image index must be between 0 and {len(x) - 1}, got {i}")
        return x[i], int(y[i])

    def defended(self, blur: bool, detector: bool):
        from .defenses.registry import build_defended, calibration_split

        det = None
        if detector:
            if self._detector is None:
                # held-out training images, else the test split's tail (the app attacks single images)
                _, _, calib, _ = calibration_split(self.model, self.model.config["dataset"], n=500, limit=1, data_dir=self.data_dir)
                self._detector = build_defended(self.model, ["blur:sigma=1.0,kernel=5"] if blur else [], "tcc:fpr=0.05", calibration=calib).detector
            det = self._detector
        d = build_defended(self.model, ["blur:sigma=1.0,kernel=5"] if blur else [])
        d.detector = det
        return d


def _single_trace_figure(tr: Any, *, timestep: int, classes: List[str]) -> Any:
    """The seed's stages for one input: input, first-conv spike maps at ``timestep``, FC raster, output vote. 4 axes."""
    from .visualization import _conv_layers, _fc_layers, _mosaic

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1, 1.3, 1.6, 1.3]})
    axes[0].imshow(tr.x[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("processed input (28×28)", fontsize=9)
    axes[0].axis("off")
    convs = _conv_layers(tr.rec)
    if convs:
        s = tr.rec.spikes[convs[0]][timestep, 0].numpy()
        axes[1].imshow(_mosaic(s), cmap=plt.get_cmap("gray_r").with_extremes(bad="#dde6f0"), vmin=0, vmax=1, interpolation="nearest")
        axes[1].set_title(f"{tr.rec.names[convs[0]]} spikes at t={timestep} ({int(s.sum())})", fontsize=9)
    else:
        axes[1].text(0.5, 0.5, "no convolutional layer", ha="center", va="center")
    axes[1].axis("off")
    fcs = _fc_layers(tr.rec)
    j = fcs[0] if len(fcs) > 1 else fcs[-1]
    sp = tr.rec.spikes[j][:, 0].numpy()
    t_idx, n_idx = np.nonzero(sp)
    axes[2].scatter(t_idx, n_idx, s=5, marker="|", color="black")
    axes[2].set_xlim(-0.5, sp.shape[0] - 0.5)
    axes[2].set_ylim(-1, sp.shape[1])
    axes[2].set_xlabel("time step")
    axes[2].set_ylabel("neuron")
    axes[2].set_title(f"{tr.rec.names[j]} raster ({int(sp.sum())} spikes)", fontsize=9)
    counts = tr.rec.spikes[-1][:, 0].sum(0).numpy()
    colors = ["tab:green" if k == tr.prediction else "tab:gray" for k in range(len(counts))]
    axes[3].bar(np.arange(len(counts)), counts, color=colors)
    axes[3].set_xticks(np.arange(len(counts)), classes)
    axes[3].set_title("output spike counts (the vote)", fontsize=9)
    fig.tight_layout()
    return fig


def margin_text(logits: torch.Tensor) -> float:
    top = logits.topk(2).values
    return float(top[0] - top[1])


def infer_view(app: AppModel, x: torch.Tensor, *, timestep: Optional[int] = None) -> Dict[str, Any]:
    """Prediction and figures for one processed image ``[1, 28, 28]``."""
    from .visualization import trace

    tr = trace(app.model, x)
    T = tr.rec.spikes[-1].shape[0]
    t = T // 2 if timestep is None else int(min(max(0, timestep), T - 1))
    return {"prediction": tr.prediction, "label": app.classes[tr.prediction], "margin": margin_text(tr.logits),
            "counts": tr.logits.tolist(), "figure": _single_trace_figure(tr, timestep=t, classes=app.classes), "trace": tr}


def attack_view(app: AppModel, x: torch.Tensor, *, attack: str = "pgd", eps: float = 0.1, surrogate: str = "model",
                blur: bool = False, detector: bool = False, label: Optional[int] = None) -> Dict[str, Any]:
    """Attack one image (adaptively, through the chosen defenses) and describe the outcome."""
    from .attacks import evaluate
    from .visualization import fc_raster_figure, images_figure, output_figure, trace

    if attack not in APP_ATTACKS:
        raise AppInputError(f"unknown attack {attack!r}")
    if not 0 <= float(eps) <= 1:
        raise AppInputError(f"eps must be in [0, 1], got {eps}")
    target = app.defended(blur, detector) if (blur or detector) else app.model
    xb = x[None]
    with torch.no_grad():
        clean_pred = int(target(xb.to(next(app.model.parameters()).device)).argmax(1))
    y = torch.tensor([clean_pred if label is None else int(label)])
    steps = 10 if attack == "pgd" else (20 if attack == "apgd" else None)
    res = evaluate(target, xb, y, attacks=[attack], eps=[float(eps)], steps=steps, queries=300 if attack == "square" else None,
                   surrogate=None if surrogate == "model" else surrogate, checks=False, keep_examples=True,
                   adaptive_detector_attack=False)
    x_adv = res.example(attack, float(eps))[0]
    view_clean = target.preprocess_input(xb)[0] if hasattr(target, "preprocess_input") else x
    view_adv = target.preprocess_input(x_adv[None])[0] if hasattr(target, "preprocess_input") else x_adv
    c, a = trace(app.model, view_clean), trace(app.model, view_adv)
    out: Dict[str, Any] = {"clean_prediction": c.prediction, "adversarial_prediction": a.prediction,
                           "adversarial_margin": margin_text(a.logits), "x_adv": x_adv,
                           "linf": float((x_adv - x).abs().max()),
                           "images": images_figure(trace(app.model, x), trace(app.model, x_adv), classes=app.classes),
                           "spikes": output_figure(c, a, classes=app.classes), "raster": fc_raster_figure(c, a)}
    if detector:
        d = target.detector
        with torch.no_grad():
            s_clean, s_adv = float(target.score(xb)), float(target.score(x_adv[None]))
        out.update({"detector_threshold": float(d.threshold), "score_clean": s_clean, "score_adversarial": s_adv,
                    "rejected": s_adv > float(d.threshold), "clean_rejected": s_clean > float(d.threshold)})
    return out


# --- the page ------------------------------------------------------------------------------------------

def build_app(app: AppModel):
    """The Gradio Blocks page."""
    import gradio as gr

    T = int(app.model.num_steps)

    def fail(e: Exception) -> str:
        return f"**⚠ {e}**"

    def classify(img: Optional[torch.Tensor], t: int):
        if img is None:
            return None, "**⚠ no input yet: draw a digit, upload an image or load a test image**", None
        v = infer_view(app, img, timestep=int(t))
        text = f"### Prediction: {v['label']}\nspike-count margin {v['margin']:.0f} (output counts: {', '.join(f'{c:.0f}' for c in v['counts'])})"
        fig = v["figure"]
        plt.close(fig)
        big = np.kron(img[0].numpy(), np.ones((7, 7)))  # 196×196 nearest-neighbour view of the 28×28 input
        return (big * 255).astype(np.uint8), text, fig

    def from_image(image, t):  # a drawing (Sketchpad value) or an upload
        try:
            x = mnist_preprocess(image)
        except RobustSNNError as e:
            return None, None, fail(e), None, None
        return (x,) + classify(x, t) + (None,)

    def from_index(index, t):
        try:
            x, y = app.test_image(index)
        except RobustSNNError as e:
            return None, None, fail(e), None, None
        return (x,) + classify(x, t) + (y,)

    def on_slider(img, t):
        if img is None:
            return None
        return classify(img, t)[2]

    def run_attack(img, label, attack, eps, surrogate, blur, det):
        if img is None:
            return None, "**⚠ no input yet: draw a digit or load a test image first**", None, None
        try:
            r = attack_view(app, img, attack=attack, eps=float(eps), surrogate=surrogate, blur=bool(blur), detector=bool(det), label=label)
        except RobustSNNError as e:
            return None, fail(e), None, None
        name = app.classes
        flipped = r["adversarial_prediction"] != r["clean_prediction"]
        text = (f"### Adversarial prediction: {name[r['adversarial_prediction']]}\n"
                f"{'the attack **changed** the decision' if flipped else 'the decision **held**'} "
                f"(clean {name[r['clean_prediction']]}, L∞ {r['linf']:.3f}, margin {r['adversarial_margin']:.0f})")
        if "rejected" in r:
            text += (f"\n\ntemporal-consistency detector: adversarial score {r['score_adversarial']:.2f} vs threshold "
                     f"{r['detector_threshold']:.2f} → **{'REJECTED' if r['rejected'] else 'accepted'}** "
                     f"(clean input {'rejected' if r['clean_rejected'] else 'accepted'})")
        for f in (r["images"], r["spikes"], r["raster"]):
            plt.close(f)
        return r["images"], text, r["spikes"], r["raster"]

    with gr.Blocks(title="robust-snn: attack a spiking network", analytics_enabled=False) as demo:
        state_x = gr.State(None)
        state_label = gr.State(None)
        gr.Markdown("# robust-snn\nDraw a digit (or upload one, or load an MNIST test image), watch the spiking network decide, "
                    "then attack it and switch defenses on.")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Draw"):
                    sketch = gr.Sketchpad(type="numpy", image_mode="RGBA", canvas_size=(280, 280), label="draw a digit")
                    draw_btn = gr.Button("Classify drawing", elem_id="classify-drawing")
                with gr.Tab("Upload"):
                    upload = gr.Image(type="numpy", label="upload an image", sources=["upload", "clipboard"])
                with gr.Tab("MNIST test image"):
                    index = gr.Number(value=0, precision=0, label="test image index", elem_id="test-index")
                    load_btn = gr.Button("Load test image", elem_id="load-test")
            with gr.Column(scale=1):
                processed = gr.Image(label="processed input (28×28)", interactive=False, image_mode="L", height=200)
                prediction = gr.Markdown("no input yet", elem_id="prediction")
                timestep = gr.Slider(0, T - 1, value=T // 2, step=1, label="time step for the conv spike maps")
        stages = gr.Plot(label="inside the network")
        gr.Markdown("## Robustness")
        with gr.Row():
            attack = gr.Dropdown(list(APP_ATTACKS), value="pgd", label="attack")
            eps = gr.Slider(0.0, 0.5, value=0.1, step=0.01, label="eps (L∞, pixel scale)")
            surrogate = gr.Dropdown(list(APP_SURROGATES), value="model", label="attack gradient (surrogate)")
            blur = gr.Checkbox(False, label="Gaussian blur defense")
            det = gr.Checkbox(False, label="temporal-consistency detector")
        attack_btn = gr.Button("Attack", variant="primary", elem_id="attack")
        adv_text = gr.Markdown("", elem_id="adv-prediction")
        adv_images = gr.Plot(label="clean, adversarial, perturbation")
        with gr.Row():
            adv_spikes = gr.Plot(label="output spikes: clean vs adversarial")
            adv_raster = gr.Plot(label="hidden-layer raster: clean vs adversarial")

        outs = [state_x, processed, prediction, stages, state_label]
        draw_btn.click(from_image, [sketch, timestep], outs)
        upload.upload(from_image, [upload, timestep], outs)
        load_btn.click(from_index, [index, timestep], outs)
        timestep.release(on_slider, [state_x, timestep], stages)
        attack_btn.click(run_attack, [state_x, state_label, attack, eps, surrogate, blur, det], [adv_images, adv_text, adv_spikes, adv_raster])
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
