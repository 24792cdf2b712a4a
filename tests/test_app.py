"""The interactive app: preprocessing and views without a browser, then the real page in headless Chromium."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from robust_snn import load_model
from robust_snn.app import AppInputError, AppModel, attack_view, infer_view, mnist_preprocess, to_grayscale

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def test_preprocess_like_mnist():
    canvas = np.full((280, 280, 3), 255, dtype=np.uint8)  # dark ink on white, off-centre
    canvas[30:150, 40:70] = 0
    x = mnist_preprocess(canvas)
    assert x.shape == (1, 28, 28) and float(x.min()) >= 0 and float(x.max()) == pytest.approx(1.0)
    rows, cols = np.nonzero(x[0].numpy() > 0.1)
    assert rows.max() - rows.min() + 1 <= 21 and rows.max() - rows.min() + 1 >= 18  # fitted into a 20-pixel box
    from scipy import ndimage

    cy, cx = ndimage.center_of_mass(x[0].numpy())
    assert abs(cy - 14) < 1 and abs(cx - 14) < 1  # centred by centre of mass
    assert float(x[0, 0, 0]) == 0.0  # background is black (MNIST polarity)


def test_preprocess_keeps_an_mnist_digit_recognizable(mnist_test):
    x, y = mnist_test
    model = load_model()
    img = (x[:20, 0].numpy() * 255).astype(np.uint8)
    batch = torch.stack([mnist_preprocess(255 - im) for im in img])  # as if drawn dark on light
    with torch.no_grad():
        acc = (model(batch).argmax(1) == y[:20]).float().mean().item()
    assert acc >= 0.9


def test_rgba_sketchpad_value_and_bad_inputs():
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[20:80, 45:55] = [0, 0, 0, 255]  # black strokes on a transparent layer
    assert mnist_preprocess({"composite": rgba, "background": None, "layers": []}).shape == (1, 28, 28)
    with pytest.raises(AppInputError, match="empty"):
        mnist_preprocess({"composite": np.zeros((100, 100, 4), dtype=np.uint8), "layers": []})
    with pytest.raises(AppInputError, match="empty"):
        mnist_preprocess(np.full((50, 50), 255, dtype=np.uint8))
    with pytest.raises(AppInputError, match="no image"):
        to_grayscale(None)
    with pytest.raises(AppInputError, match="too large"):
        to_grayscale(np.zeros((5000, 5000), dtype=np.uint8))
    with pytest.raises(AppInputError, match="not an image"):
        to_grayscale(np.array(["a", "b"], dtype=object))


def test_views_match_the_model(data_dir):
    app = AppModel(load_model(), data_dir=str(data_dir))
    x, y = app.test_image(0)
    v = infer_view(app, x, timestep=2)
    with torch.no_grad():
        assert v["prediction"] == int(app.model(x[None]).argmax(1))
    assert len(v["figure"].axes) == 4
    r = attack_view(app, x, attack="pgd", eps=0.3, label=y)
    assert r["adversarial_prediction"] != y and r["linf"] <= 0.3 + 1e-6
    r = attack_view(app, x, attack="fgsm", eps=0.05, blur=True, detector=True, label=y)
    assert {"rejected", "score_adversarial", "detector_threshold"} <= set(r)
    with pytest.raises(AppInputError, match="between 0 and"):
        app.test_image(10**6)
    with pytest.raises(AppInputError, match="whole number"):
        app.test_image("seven")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(data_dir):
    port = _free_port()
    env = {**os.environ, "ROBUST_SNN_DATA": str(data_dir), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"robust-snn-app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "robust_snn", "app", "--port", str(port), "--device", "cpu"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with status {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the app did not answer within 180 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_app_in_headless_chromium(server, mnist_test, tmp_path):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is required for the browser test (apt-get install chromium)"
    x, y = mnist_test
    index = 7
    with torch.no_grad():
        expected = int(load_model()(x[index:index + 1]).argmax(1))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(server, wait_until="domcontentloaded")
        page.get_by_role("tab", name="MNIST test image").click()
        page.locator("#test-index input").fill(str(index))
        page.locator("#load-test").click()
        page.wait_for_function("document.querySelector('#prediction')?.innerText.includes('Prediction:')", timeout=120000)
        shown = re.search(r"Prediction:\s*(\S+)", page.locator("#prediction").inner_text()).group(1)
        assert shown == str(expected)
        page.locator("#attack").click()
        page.wait_for_function("document.querySelector('#adv-prediction')?.innerText.includes('Adversarial prediction')", timeout=120000)
        text = page.locator("#adv-prediction").inner_text()
        assert re.search(r"Adversarial prediction:\s*\d", text) and "L∞ 0.100" in text
        page.wait_for_timeout(1000)
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("ROBUST_SNN_SCREENSHOT"):
        shutil.copy(shot, os.environ["ROBUST_SNN_SCREENSHOT"])


def test_app_command_without_gradio_says_how_to_install(monkeypatch):
    import builtins

    from click.testing import CliRunner

    from robust_snn.cli import main

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gradio":
            raise ImportError("no gradio")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    res = CliRunner().invoke(main, ["app", "--port", "7999"])
    assert res.exit_code != 0 and 'pip install -e ".[app]"' in res.output and "Traceback" not in res.output
