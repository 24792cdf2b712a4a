"""Defenses: preprocessors, the temporal-consistency detector, adaptive vs transfer, adversarial training, smoothing."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from robust_snn import load_model
from robust_snn.attacks import evaluate
from robust_snn.cli import main
from robust_snn.defenses.base import Defended, parse_defense_spec
from robust_snn.defenses.blur import GaussianBlur
from robust_snn.defenses.quantize import Quantize
from robust_snn.defenses.registry import build_defended, make_preprocessor
from robust_snn.defenses.smoothing import ABSTAIN, Smooth, certify_dataset, lower_confidence_bound
from robust_snn.defenses.tcc import TemporalConsistencyDetector, consistency_features, soft_consistency_features
from robust_snn.errors import RobustSNNError


# --- preprocessors -------------------------------------------------------------------------------

def test_blur_preserves_shape_range_and_is_differentiable():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    blur = GaussianBlur(sigma=1.0, kernel=5)
    out = blur(x)
    assert out.shape == x.shape and float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a constant image stays constant; the kernel sums to one
    const = torch.full((1, 1, 28, 28), 0.3)
    assert torch.allclose(blur(const), const, atol=1e-6)
    assert math.isclose(float(blur.weight.sum()), 1.0, rel_tol=1e-6)
    # an impulse spreads out: its maximum drops
    imp = torch.zeros(1, 1, 28, 28)
    imp[0, 0, 14, 14] = 1.0
    assert float(blur(imp).max()) < 0.5


def test_blur_gradient_matches_finite_differences():
    torch.manual_seed(1)
    x = torch.rand(1, 1, 8, 8, dtype=torch.double) * 0.5 + 0.25
    blur = GaussianBlur(sigma=0.8, kernel=3).double()
    blur.weight = blur.weight.double()
    assert torch.autograd.gradcheck(lambda t: blur(t), (x.requires_grad_(True),))


def test_quantize_values_and_straight_through_gradient():
    x = torch.tensor([[[[0.0, 0.1, 0.49, 0.51, 1.0]]]], requires_grad=True)
    q = Quantize(bits=1)
    out = q(x)
    assert out.tolist() == [[[[0.0, 0.0, 0.0, 1.0, 1.0]]]]
    g = torch.tensor([[[[1.0, -2.0, 3.0, 0.5, 4.0]]]])
    out.backward(g)
    assert torch.equal(x.grad, g), "BPDA: the gradient passes straight through"
    levels = Quantize(bits=3)(torch.rand(100)).mul(7)
    assert torch.allclose(levels, levels.round(), atol=1e-5)


@pytest.mark.parametrize("spec,err", [("blur:sigma=-1", "sigma"), ("blur:kernel=4", "odd"), ("quantize:bits=9", "bits"),
                                      ("median", "unknown defense"), ("blur:radius=2", "unknown parameter"), ("blur:sigma", "key=value")])
def test_bad_defense_specs(spec, err):
    with pytest.raises(RobustSNNError, match=err):
        make_preprocessor(spec)


def test_parse_defense_spec():
    assert parse_defense_spec("blur:sigma=1.0,kernel=5") == ("blur", {"sigma": 1.0, "kernel": 5})
    assert parse_defense_spec(" Quantize : bits=4 ") == ("quantize", {"bits": 4})
    assert make_preprocessor("none") is None


def test_defended_composes_in_order(tiny_model, eval_batch):
    x, _ = eval_batch
    blur, quant = GaussianBlur(sigma=1.0), Quantize(bits=2)
    d = Defended(tiny_model, preprocessors=[blur, quant]).eval()
    with torch.no_grad():
        assert torch.equal(d(x), tiny_model(quant(blur(x))))
    assert d.describe() == "blur:sigma=1,kernel=5 + quantize:bits=2"
    assert d.config is tiny_model.config and not d.training


# --- temporal-consistency detector ---------------------------------------------------------------

def test_consistency_features_on_hand_made_spike_trains():
    T, K = 8, 3
    steady = torch.zeros(T, 1, K)
    steady[:, 0, 1] = 1  # class 1 spikes every step: decided at once, never flips
    flipping = torch.zeros(T, 1, K)
    flipping[:4, 0, 0] = 1  # class 0 leads early, class 2 overtakes late
    flipping[3:, 0, 2] = 1
    f = consistency_features(torch.cat([steady, flipping], 1), windows=4)
    assert f[0, 0] == 0 and f[0, 1] == 0 and f[0, 2] == 0 and f[0, 3] == -1.0  # margin 8/8
    assert f[1, 0] > 0, "the running vote flips"
    assert f[1, 1] > 0.5, "decided late"
    assert f[1, 2] >= 0.5, "early windows disagree with the final vote"
    assert f[1, 3] > f[0, 3], "smaller margin"
    soft = soft_consistency_features(torch.cat([steady, flipping], 1))
    assert (soft[1, :3] > soft[0, :3]).all()


def test_detector_threshold_reaches_target_fpr(tiny_model, mnist_test):
    x, _ = mnist_test
    det = TemporalConsistencyDetector(tiny_model, fpr=0.1)
    det.calibrate(x[:1000])
    assert float((det.scores(x[:1000]) > det.threshold).float().mean()) <= 0.1
    fpr = float(det.detect(x[1000:3000]).float().mean())
    # binomial sampling error of 2,000 draws at p = 0.1 is 0.0067; allow 4 sigma
    assert abs(fpr - 0.1) < 0.03, fpr


def test_detector_requires_calibration(tiny_model, eval_batch):
    det = TemporalConsistencyDetector(tiny_model)
    with pytest.raises(RobustSNNError, match="calibrate"):
        det.detect(eval_batch[0])
    with pytest.raises(RobustSNNError, match="at least 20"):
        det.calibrate(eval_batch[0][:5])


@pytest.mark.slow
def test_detector_scores_pgd_examples_higher_on_shipped_model(mnist_test):
    x, y = mnist_test
    model = load_model()
    d = build_defended(model, [], "tcc:fpr=0.05", calibration=x[-1000:])
    res = evaluate(d, x[:256], y[:256], attacks=["pgd"], eps=[0.1], steps=10, checks=False)
    pgd = next(r for r in res["results"] if r["attack"] == "pgd")
    assert pgd["auroc"] > 0.75, pgd
    assert pgd["detection_rate"] > 0.2
    assert pgd["robust_accuracy_with_rejection"] > pgd["robust_accuracy"]
    tcc = next(r for r in res["results"] if r["attack"] == "pgd-tcc")  # added automatically: adaptive attack
    assert tcc["adaptive"] and tcc["within_bound"]
    assert res["detector"]["clean_rejection_rate"] < 0.1


# --- adaptive vs transfer --------------------------------------------------------------------------

def test_adaptive_attack_through_blur_at_least_as_strong_as_transfer(tiny_model, eval_batch):
    x, y = eval_batch
    d = build_defended(tiny_model, ["blur:sigma=1.0,kernel=5"])
    adaptive = evaluate(d, x, y, attacks=["pgd"], eps=[0.15], steps=10, checks=False)
    transfer = evaluate(d, x, y, attacks=["pgd"], eps=[0.15], steps=10, checks=False, source_model=tiny_model)
    assert adaptive["clean_accuracy"] == transfer["clean_accuracy"]
    ra, rt = adaptive["results"][0]["robust_accuracy"], transfer["results"][0]["robust_accuracy"]
    assert ra <= rt, (ra, rt)
    assert ra < adaptive["clean_accuracy"]
    assert not transfer["results"][0]["adaptive"]


def test_pgd_tcc_needs_a_detector(tiny_model, eval_batch):
    with pytest.raises(RobustSNNError, match="detector"):
        evaluate(tiny_model, *eval_batch, attacks=["pgd-tcc"], eps=[0.1])


# --- adversarial training ------------------------------------------------------------------------

def test_adversarial_training_raises_pgd_accuracy(data_dir, mnist_test, tmp_path):
    from robust_snn.training import TrainSettings, train

    x, y = mnist_test
    acc = {}
    for adv in ("none", "fgsm-rs"):
        s = TrainSettings(epochs=3, batch_size=50, lr=1e-2, limit=2000, val_split=0.0, test_limit=100, seed=0,
                          adv=adv, adv_eps=0.1, adv_warmup=1)
        model, _ = train({"arch": "csnn", "channels": [4, 8], "hidden": [32], "num_steps": 4}, s, out=tmp_path / f"{adv}.pt",
                         data_dir=str(data_dir), device="cpu", progress=False)
        acc[adv] = evaluate(model, x[:500], y[:500], attacks=["pgd"], eps=[0.1], steps=10, checks=False)["results"][0]["robust_accuracy"]
    assert acc["fgsm-rs"] > acc["none"] + 0.03, acc


def test_adversarial_training_settings_are_validated():
    from robust_snn.training import TrainSettings

    for kw, msg in [({"adv": "free"}, "unknown --adv"), ({"adv": "pgd", "adv_eps": 0.0}, "positive"),
                    ({"adv": "pgd", "adv_eps": 2.0}, r"\[0, 1\]"), ({"adv": "pgd", "adv_steps": 0}, "adv-steps"),
                    ({"adv": "trades", "loss": "mse"}, "loss ce"), ({"adv": "pgd", "adv_warmup": 9}, "adv-warmup"),
                    ({"noise_sigma": -0.1}, "noise-sigma")]:
        with pytest.raises(RobustSNNError, match=msg):
            TrainSettings(**kw).validate()


def test_craft_respects_budget_and_mode(tiny_model, eval_batch):
    from robust_snn.defenses.adversarial import craft

    x, y = eval_batch
    tiny_model.train()
    for method in ("fgsm-rs", "pgd", "trades"):
        x_adv = craft(tiny_model, x, y, method=method, eps=0.2, steps=3)
        assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        assert tiny_model.training, "crafting restores the model's mode"
        assert all(p.grad is None for p in tiny_model.parameters())
    tiny_model.eval()


# --- randomized smoothing ------------------------------------------------------------------------

class _Constant(torch.nn.Module):
    """Toy base classifier: always class ``c`` (or, with ``c=None``, a uniformly random class)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = {"num_classes": 10}

    def forward(self, x):
        b = x.shape[0]
        if self.c is None:
            return torch.randn(b, 10)
        out = torch.zeros(b, 10)
        out[:, self.c] = 1
        return out


def test_certify_abstains_when_unsure_and_radius_grows_with_sigma():
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([3, 3, 3, 3])
    torch.manual_seed(0)
    unsure = certify_dataset(_Constant(None), x, y, sigma=0.25, n0=50, n=200, alpha=0.001)
    assert unsure["abstain_rate"] == 1.0 and unsure["table"][0]["certified_accuracy"] == 0.0
    radii = [certify_dataset(_Constant(3), x, y, sigma=s, n0=20, n=200, alpha=0.001)["rows"][0]["radius"] for s in (0.12, 0.25, 0.5)]
    assert radii[0] < radii[1] < radii[2]
    # a constant classifier: p_A = alpha ** (1 / n) exactly, radius = sigma * Phi^-1(p_A)
    from scipy.stats import norm

    assert math.isclose(radii[1], 0.25 * norm.ppf(0.001 ** (1 / 200)), rel_tol=1e-6)


def test_clopper_pearson_and_predict():
    from scipy.stats import beta

    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert math.isclose(lower_confidence_bound(90, 100, 0.05), beta.ppf(0.05, 90, 11))
    g = torch.Generator().manual_seed(0)
    assert Smooth(_Constant(7), num_classes=10, sigma=0.5).predict(torch.rand(1, 28, 28), n=50, alpha=0.01, generator=g) == 7
    assert Smooth(_Constant(None), num_classes=10, sigma=0.5).predict(torch.rand(1, 28, 28), n=50, alpha=0.01, generator=g) == ABSTAIN


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_attack_with_defense_and_detector(tiny_checkpoint, data_dir, tmp_path):
    res = CliRunner().invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--limit", "64", "--attack", "pgd", "--steps", "5",
                                    "--eps", "0.1", "--defense", "blur:sigma=0.8,kernel=3", "--detector", "tcc:fpr=0.1",
                                    "--calibration-size", "200", "--data-dir", str(data_dir), "--json", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["defense"] == "blur:sigma=0.8,kernel=3 + tcc:fpr=0.1,windows=4" and data["adaptive"] is True
    assert [r["attack"] for r in data["results"]] == ["pgd", "pgd-tcc"]
    assert {"detection_rate", "auroc", "robust_accuracy_with_rejection"} <= set(data["results"][0])
    assert "robust_accuracy_with_rejection" in data["worst_case"][0]
    assert (tmp_path / "o" / "roc.png").stat().st_size > 0
    res = CliRunner().invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--limit", "32", "--attack", "pgd", "--steps", "3",
                                    "--defense", "quantize:bits=4", "--no-adaptive", "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    assert "non-adaptive" in res.output


@pytest.mark.parametrize("args,msg", [(["--defense", "blur:sigma=0"], "sigma"), (["--detector", "lid"], "unknown detector"),
                                      (["--no-adaptive"], "needs a --defense"), (["--attack", "pgd-tcc"], "detector")])
def test_cli_defense_errors_are_one_line(tiny_checkpoint, data_dir, args, msg):
    res = CliRunner().invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--limit", "8", "--data-dir", str(data_dir), *args])
    assert res.exit_code != 0
    assert msg in res.output and "Traceback" not in res.output


def test_cli_certify(tiny_checkpoint, data_dir, tmp_path):
    res = CliRunner().invoke(main, ["certify", "--checkpoint", str(tiny_checkpoint), "--limit", "3", "--n", "100", "--n0", "10",
                                    "--sigma", "0.25", "--data-dir", str(data_dir), "--json", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["count"] == 3 and len(data["rows"]) == 3 and data["table"][0]["radius"] == 0.0
    assert all(r["prediction"] == ABSTAIN or 0 <= r["prediction"] < 10 for r in data["rows"])
    assert (tmp_path / "c" / "certify.png").stat().st_size > 0 and (tmp_path / "c" / "certify.csv").is_file()
    res = CliRunner().invoke(main, ["certify", "--checkpoint", str(tiny_checkpoint), "--sigma", "0", "--limit", "1", "--data-dir", str(data_dir)])
    assert res.exit_code != 0 and "sigma" in res.output


def test_calibration_split_is_disjoint_from_the_evaluation(tiny_model, data_dir, tmp_path):
    from robust_snn.defenses.registry import calibration_split

    tiny_model.checkpoint_recipe = {"seed": 0, "val_split": 0.1, "limit": 2000}  # as if trained holding out 200 images
    x, y, calib, note = calibration_split(tiny_model, "mnist", n=100, limit=50, data_dir=str(data_dir))
    assert note is None and len(x) == 50 and calib.shape == (100, 1, 28, 28)  # the checkpoint's held-out training images
    tiny_model.checkpoint_recipe = {"seed": 0, "val_split": 0.0}  # trained on everything: nothing held out
    test_only = tmp_path / "MNIST" / "raw"
    test_only.mkdir(parents=True)
    for f in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = next(p for p in (data_dir / "MNIST" / "raw").iterdir() if p.name.startswith(f))
        (test_only / src.name).symlink_to(src)
    x, y, calib, note = calibration_split(tiny_model, "mnist", n=100, data_dir=str(tmp_path))
    assert "last 100 test images" in note and len(x) == 9900 and len(y) == 9900
    full, _ = __import__("robust_snn.data", fromlist=["load_split"]).load_split("mnist", "test", data_dir=str(tmp_path))
    assert torch.equal(calib, full[-100:]) and torch.equal(x, full[:9900])
    with pytest.raises(RobustSNNError, match="exceed"):
        calibration_split(tiny_model, "mnist", n=100, limit=9950, data_dir=str(tmp_path))
    with pytest.raises(RobustSNNError, match="at least 20"):
        calibration_split(tiny_model, "mnist", n=5, data_dir=str(tmp_path))


def test_denoise_keeps_events_with_a_recent_neighbour_and_drops_isolated_ones():
    from robust_snn.defenses.denoise import Denoise

    x = torch.zeros(1, 4, 2, 6, 6)
    x[0, 0, 0, 1, 1] = 1  # isolated: noise
    x[0, 2, 1, 3, 3] = x[0, 2, 0, 3, 4] = 1  # neighbours in the same bin, either polarity
    x[0, 1, 0, 5, 0] = x[0, 2, 0, 4, 1] = 1  # the later one has an earlier neighbour, the earlier one only a later one
    x[0, 3, 0, 0, 5] = 1  # isolated
    kept = {tuple(i) for i in Denoise(window=1)(x).nonzero()[:, 1:].tolist()}
    assert kept == {(2, 1, 3, 3), (2, 0, 3, 4), (2, 0, 4, 1)}
    # window 0: only the same bin counts, so the event with an earlier neighbour goes too
    assert {tuple(i) for i in Denoise(window=0)(x).nonzero()[:, 1:].tolist()} == {(2, 1, 3, 3), (2, 0, 3, 4)}
    # a longer window: the bin-3 event still has no neighbour at all; the same events survive
    assert {tuple(i) for i in Denoise(window=3)(x).nonzero()[:, 1:].tolist()} == kept


def test_denoise_is_binary_in_binary_out_with_a_straight_through_gradient():
    from robust_snn.defenses.denoise import Denoise

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 5, 2, 8, 8, generator=g) < 0.1).float().requires_grad_()
    out = Denoise(window=1)(x)
    assert ((out == 0) | (out == 1)).all() and (out <= x).all()  # a subset of the events
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # BPDA: identity
    with pytest.raises(RobustSNNError, match="event tensors"):
        Denoise()(torch.zeros(2, 1, 28, 28))
    for bad in (-1, 1.5):
        with pytest.raises(RobustSNNError, match="window"):
            Denoise(window=bad)


def test_event_and_image_defenses_refuse_the_other_kind_of_model():
    from robust_snn.defenses.denoise import Denoise

    with pytest.raises(RobustSNNError, match="use blur or quantize"):
        Defended(load_model(), preprocessors=[Denoise()])
    res = CliRunner().invoke(main, ["attack", "--limit", "5", "--defense", "denoise"])
    assert res.exit_code != 0 and "filters event tensors" in res.output and "Traceback" not in res.output
