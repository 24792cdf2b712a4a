"""The shipped default checkpoint on the real MNIST test split (slow, but run in CI)."""
import json

import pytest
from click.testing import CliRunner

from robust_snn import load_model
from robust_snn.attacks import evaluate
from robust_snn.checkpoint import REPO_CHECKPOINTS, default_checkpoint, read_checkpoint
from robust_snn.cli import main
from robust_snn.evaluation import evaluate_clean

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped():
    return load_model()


def test_shipped_checkpoint_reaches_99_percent(shipped, mnist_test):
    x, y = mnist_test
    res = evaluate_clean(shipped, x, y)
    assert res["n"] == 10000
    assert res["accuracy"] >= 0.99
    meta = read_checkpoint(default_checkpoint())
    assert meta["metrics"]["test_n"] == 10000
    # the same number of correct images (the card's float may be float32-rounded: 0.99049997 for 9905/10000)
    assert round(meta["metrics"]["test_accuracy"] * 10000) == round(res["accuracy"] * 10000), "model card number must be reproducible"
    assert default_checkpoint().stat().st_size < 5 * 2**20


def test_large_checkpoint_reaches_99_3_percent_as_its_card_says(mnist_test):
    """checkpoints/csnn-mnist-large.pt: the standard model of issue 20 (>= 99.3 % on the full test split)."""
    path = REPO_CHECKPOINTS / "csnn-mnist-large.pt"
    meta = read_checkpoint(path)
    assert meta["recipe"]["adv"] == "none" and meta["metrics"]["test_n"] == 10000
    res = evaluate_clean(load_model(path), *mnist_test)
    assert res["n"] == 10000 and res["accuracy"] >= 0.993
    # the card's 9,939 correct images, reproduced with 1 and 2 threads, AVX2 and no vector kernels; 2 images of slack
    # for a threshold crossing that another CPU's summation order might flip
    assert abs(round(meta["metrics"]["test_accuracy"] * 10000) - round(res["accuracy"] * 10000)) <= 2, "card number reproducible"


def test_pgd_at_eps_03_drives_accuracy_below_5_percent(shipped, mnist_test):
    x, y = mnist_test
    res = evaluate(shipped, x[:200], y[:200], attacks=["pgd"], eps=[0.3])
    assert res["clean_accuracy"] > 0.95
    assert res["results"][0]["robust_accuracy"] < 0.05


def test_robust_accuracy_non_increasing_over_eps(shipped, mnist_test):
    x, y = mnist_test
    res = evaluate(shipped, x[:200], y[:200], attacks=["fgsm", "pgd"], eps=[0.0, 0.05, 0.1, 0.2])
    accs = [w["robust_accuracy"] for w in res["worst_case"]]
    assert [w["eps"] for w in res["worst_case"]] == [0.0, 0.05, 0.1, 0.2]
    assert accs[0] == res["clean_accuracy"]
    assert all(a >= b for a, b in zip(accs, accs[1:])), accs
    for name in ("fgsm", "pgd"):
        rows = [r["robust_accuracy"] for r in res["results"] if r["attack"] == name]
        assert all(a >= b for a, b in zip(rows, rows[1:])), (name, rows)
    assert all(c["passed"] for c in res["checks"]), res["checks"]


def test_headline_command_json(mnist_test):
    """The headline command runs the standard suite and reports an honest number.

    On these 200 images the union of FGSM, PGD-20, APGD-CE and APGD-DLR over the eight gradient
    choices of the old ``--surrogate ensemble`` left 38.0 %; the default suite must not be weaker.
    """
    res = CliRunner().invoke(main, ["attack", "--eps", "0.1", "--limit", "200", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"checkpoint", "n", "clean_accuracy", "results", "worst_case", "checks", "suite"} <= set(data)
    assert data["n"] == 200 and data["suite"] == "standard" and data["robustness_claim"] is True
    assert [r["attack"] for r in data["results"]][-1] == "square"  # the gradient-free masking check ends the cascade
    for r in data["results"]:
        assert {"attack", "eps", "robust_accuracy", "ci_low", "ci_high", "attacked", "broken", "linf_max"} <= set(r)
        assert r["linf_max"] <= 0.1 + 1e-6 and r["cascade"]
    w = data["worst_case"][0]
    assert w["eps"] == 0.1 and w["robust_accuracy"] <= 0.38, w
    assert w["robust_accuracy"] == data["results"][-1]["robust_accuracy"]
    assert all(c["passed"] for c in data["checks"]), data["checks"]


def test_adversarially_trained_checkpoint(mnist_test):
    """checkpoints/csnn-mnist-at.pt: APGD-10 family crafting, membrane readout; its card's clean figure and an APGD floor."""
    path = REPO_CHECKPOINTS / "csnn-mnist-at.pt"
    meta = read_checkpoint(path)
    recipe = meta["recipe"]
    assert recipe["adv"] == "pgd" and recipe["adv_eps"] == 0.3 and recipe["adv_attack"] == "apgd"
    assert recipe["adv_gradients"] == "model,fast_sigmoid:slope=5,fast_sigmoid:slope=10,atan"
    assert meta["config"]["readout"] == "membrane"
    assert meta["metrics"]["test_n"] == 10000 and meta["metrics"]["test_accuracy"] >= 0.985
    model = load_model(path)
    x, y = mnist_test
    clean = evaluate_clean(model, x, y)["accuracy"]
    # trained on a CPU: the card's 98.86 % re-measured to the image on the AMD EPYC; within 10 images on any CPU
    assert abs(clean - meta["metrics"]["test_accuracy"]) <= 0.001 and clean >= 0.985, clean
    # the suite's first stage, shortened: APGD-CE through the wide surrogate (not the training surrogate alone)
    res = evaluate(model, x[:200], y[:200], attacks=["apgd"], surrogate="fast_sigmoid:slope=5", eps=[0.3], steps=25)
    assert res["results"][0]["robust_accuracy"] >= 0.85  # 95.0 % measured (93.0 % with 100 steps); csnn-mnist.pt: 0 %
    assert all(c["passed"] for c in res["checks"]), res["checks"]


def test_first_adversarially_trained_checkpoint_is_kept(mnist_test):
    """checkpoints/csnn-mnist-at-pgd.pt, the PGD-AT model of the card's history and the suite studies, still loads and scores."""
    path = REPO_CHECKPOINTS / "csnn-mnist-at-pgd.pt"
    meta = read_checkpoint(path)
    recipe = meta["recipe"]
    assert recipe["adv"] == "pgd" and recipe["adv_eps"] == 0.3 and recipe["adv_steps"] == 10 and recipe["epochs"] == 8
    assert meta["config"]["readout"] == "count" and round(meta["metrics"]["test_accuracy"] * 10000) == 9843  # its card
    model = load_model(path)
    x, y = mnist_test
    assert evaluate_clean(model, x, y)["accuracy"] >= 0.98  # 98.47 % on a CPU (98.43 % recorded on the GPU)
    res = evaluate(model, x[:200], y[:200], attacks=["pgd"], eps=[0.3])
    assert res["results"][0]["robust_accuracy"] >= 0.75  # 92.0 % measured: PGD through its training surrogate
    assert all(c["passed"] for c in res["checks"]), res["checks"]


def test_shipped_event_checkpoint_on_the_offline_synthetic_test_split(tmp_path, monkeypatch):
    """checkpoints/scnn-nmnist.pt: its card's accuracy on the synthetic N-MNIST test split (generated offline)."""
    from robust_snn.data import load_split

    monkeypatch.setenv("ROBUST_SNN_CACHE", str(tmp_path))  # generate here, not in the user's cache
    path = REPO_CHECKPOINTS / "scnn-nmnist.pt"
    ckpt = read_checkpoint(path)
    assert ckpt["metrics"]["test_n"] == 10000 and ckpt["metrics"]["test_accuracy"] >= 0.97  # the card's figure
    model = load_model(path)
    assert model.events and model.config["dataset"] == "nmnist"
    x, y = load_split("nmnist", "test", num_steps=model.num_steps, limit=300, data_dir=tmp_path)  # no N-MNIST there: synthetic
    assert x.shape == (300, 8, 2, 34, 34)
    acc = evaluate_clean(model, x, y)["accuracy"]
    assert acc >= 0.95, acc  # 98.9 % on all 10,000; the first 300 measured at 99.7 %
