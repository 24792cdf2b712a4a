import warnings

import pytest
import torch

from robust_snn.attacks import ATTACKS, EOT, build_attack, evaluate, get_spec, margins
from robust_snn.attacks.checks import RobustnessWarning
from robust_snn.attacks.registry import attack_params
from robust_snn.errors import RobustSNNError
from robust_snn.models import build_model

FAST = dict(steps=5, queries=100)


@pytest.fixture()
def correct_batch(tiny_model, mnist_test):
    """24 test images the tiny model classifies correctly."""
    x, y = mnist_test
    x, y = x[:300], y[:300]
    with torch.no_grad():
        ok = tiny_model(x).argmax(1) == y
    return x[ok][:24], y[ok][:24]


@pytest.mark.parametrize("name", [n for n, a in ATTACKS.items() if a.norm != "L0"])  # event attacks: tests/test_events.py
def test_every_attack_respects_budget_and_beats_clean(name, tiny_model, correct_batch, mnist_test):
    x, y = correct_batch
    n = 8 if name in ("deepfool", "autoattack", "cw") else len(x)
    x, y = x[:n], y[:n]
    spec = get_spec(name)
    target = tiny_model
    if spec.needs_detector:  # pgd-tcc attacks a model with the temporal-consistency detector
        from robust_snn.defenses.registry import build_defended

        target = build_defended(tiny_model, [], "tcc:fpr=0.1", calibration=mnist_test[0][2000:2300])
    # DeepFool's linearization through surrogate gradients overshoots far (L2 ~ 15 on MNIST SNNs)
    big = 0.3 if spec.norm == "Linf" else 20.0 if name == "deepfool" else 4.0
    kwargs = dict(FAST, steps=30) if name == "cw" else FAST
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        res = evaluate(target, x, y, attacks=[name], eps=[0.3], eps_l2=[big], keep_examples=True, **kwargs)
    row = res["results"][0]
    x_adv = res["examples"][f"{name}@{big:g}"]
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    norm = delta.abs().amax(1) if spec.norm == "Linf" else delta.norm(dim=1)
    assert (norm <= big + 1e-5).all()
    assert row["within_bound"] and row["in_range"]
    assert row["clean_accuracy"] == 1.0
    assert row["robust_accuracy"] < row["clean_accuracy"], f"{name} failed to reduce accuracy at eps={big}"


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgdl2", "eotpgd", "apgd", "apgd-dlr", "square"])
def test_eps_zero_leaves_inputs_unchanged(name, tiny_model, correct_batch):
    x, y = correct_batch
    spec = get_spec(name)
    atk = build_attack(spec, tiny_model, 0.0, attack_params(spec, **FAST), n_classes=10)
    assert torch.allclose(atk(x, y), x, atol=1e-7)


def test_rate_coded_model_fgsm_changes_input_and_uses_eot():
    torch.manual_seed(0)
    model = build_model("csnn", channels=[4, 8], hidden=[16], encoding="rate", threshold=0.3, num_steps=6).eval()
    x = torch.rand(6, 1, 28, 28) * 0.8 + 0.1
    with torch.no_grad():
        y = EOT(model, samples=16)(x).argmax(1)
    atk = build_attack(get_spec("fgsm"), EOT(model, samples=4), 0.1, {}, n_classes=10)
    x_adv = atk(x, y)
    assert (x_adv - x).abs().amax() == pytest.approx(0.1, abs=1e-6), "FGSM must move a rate-coded input"
    with pytest.warns(RobustnessWarning, match="randomized"):
        evaluate(model, x, y, attacks=["fgsm"], eps=[0.1], eot_samples=4, samples=3)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, inp: seen.append((inp[0].shape[0], torch.is_grad_enabled())))
    res = evaluate(model, x, y, attacks=["fgsm"], eps=[0.1], eot_samples=4, samples=3, checks=False)
    handle.remove()
    assert res["stochastic"] and res["eot_samples"] == 4 and res["eval_samples"] == 3
    assert (6 * 3, False) in seen, "predictions are judged over 3 forward draws"
    grad_calls = [b for b, g in seen if g]
    assert grad_calls and all(b % 4 == 0 and b >= 4 for b in grad_calls), "every gradient averages 4 encoder draws"


def test_direct_model_skips_eot(tiny_model, correct_batch):
    x, y = correct_batch
    seen = []
    handle = tiny_model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustnessWarning)
        res = evaluate(tiny_model, x, y, attacks=["fgsm"], eps=[0.1], eot_samples=8)
    handle.remove()
    assert res["eot_samples"] == 1 and max(seen) == len(x)


def test_worst_case_is_per_sample_minimum(tiny_model, mnist_test):
    x, y = mnist_test
    res = evaluate(tiny_model, x[:64], y[:64], attacks=["fgsm", "pgd", "square"], eps=[0.0, 0.05, 0.15], keep_examples=True, **FAST)
    for w in res["worst_case"]:
        rows = [r for r in res["results"] if r["eps"] == w["eps"]]
        assert w["robust_accuracy"] <= min(r["robust_accuracy"] for r in rows)
    assert res["worst_case"][0]["robust_accuracy"] == res["clean_accuracy"]  # eps = 0: attacks ran, changed nothing
    assert all(r["linf_max"] == 0 for r in res["results"] if r["eps"] == 0)
    accs = [w["robust_accuracy"] for w in res["worst_case"]]
    assert accs == sorted(accs, reverse=True)
    assert {c["name"] for c in res["checks"]} >= {"eps=0 reproduces clean accuracy", "robust accuracy non-increasing in eps",
                                                    "iterative attacks at least as strong as single-step",
                                                    "gradient-free attack not stronger than gradient attacks"}


def test_restarts_never_weaken(tiny_model, correct_batch):
    x, y = correct_batch
    one = evaluate(tiny_model, x, y, attacks=["pgd"], eps=[0.08], steps=3, restarts=1)
    three = evaluate(tiny_model, x, y, attacks=["pgd"], eps=[0.08], steps=3, restarts=3)
    assert three["results"][0]["robust_accuracy"] <= one["results"][0]["robust_accuracy"]


def test_surrogate_ensemble_at_least_as_strong_as_member(tiny_model, correct_batch):
    x, y = correct_batch
    single = evaluate(tiny_model, x, y, attacks=["fgsm"], eps=[0.1], surrogate="fast_sigmoid:slope=25")
    ens = evaluate(tiny_model, x, y, attacks=["fgsm"], eps=[0.1], surrogate="ensemble")
    assert ens["results"][0]["robust_accuracy"] <= single["results"][0]["robust_accuracy"]
    assert ens["results"][0]["surrogate"] == "ensemble"
    rate = evaluate(tiny_model, x, y, attacks=["pgd"], eps=[0.3], surrogate="rate", steps=10)
    assert rate["results"][0]["robust_accuracy"] < 1.0, "the rate-based gradient must produce a working attack"


def test_minimum_norm_attack_outside_budget_counts_as_failure(tiny_model, correct_batch):
    x, y = correct_batch
    res = evaluate(tiny_model, x[:6], y[:6], attacks=["cw"], eps_l2=[0.01], steps=20)
    assert res["results"][0]["robust_accuracy"] == 1.0 and res["results"][0]["l2_max"] <= 0.01


def test_zero_gradient_and_training_mode_warnings(tiny_model, correct_batch):
    x, y = correct_batch
    with pytest.warns(RobustnessWarning, match="all-zero input gradient"):
        evaluate(tiny_model, x[:8], y[:8], attacks=["fgsm"], eps=[0.1], surrogate="triangular:width=0.000001")
    tiny_model.train()
    with pytest.warns(RobustnessWarning, match="training mode"):
        evaluate(tiny_model, x[:8], y[:8], attacks=["fgsm"], eps=[0.1])
    assert tiny_model.training, "the caller's mode is restored"


def test_margins():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 5.0]])
    assert margins(logits, torch.tensor([0, 2])).tolist() == [1.0, 0.0]


def test_bad_arguments(tiny_model, correct_batch):
    x, y = correct_batch
    with pytest.raises(RobustSNNError, match="eps must be in"):
        evaluate(tiny_model, x, y, eps=[1.5])
    with pytest.raises(RobustSNNError, match="unknown attack"):
        evaluate(tiny_model, x, y, attacks=["foo"])
    with pytest.raises(RobustSNNError, match="images must be in"):
        evaluate(tiny_model, x * 2, y)


def test_dropout_batchnorm_model_is_judged_in_eval_mode():
    torch.manual_seed(0)
    model = build_model("csnn-deep", channels=[4, 8, 8, 8], hidden=[16], threshold=0.3, num_steps=3).eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    res = evaluate(model, x, y, attacks=["fgsm", "pgd"], eps=[0.0, 0.05], steps=3, keep_examples=True)
    assert not model.training
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), f"attack changed BatchNorm statistic {k}"
    with torch.no_grad():
        preds = model(res["examples"]["pgd@0.05"]).argmax(1)
    assert torch.equal(preds, res["example_predictions"]["pgd@0.05"])
    assert res["results"][0]["robust_accuracy"] == 1.0  # fgsm at eps 0


@pytest.mark.parametrize("surrogate", ["rate", "ensemble"])
def test_rate_gradient_with_membrane_readout(surrogate):
    torch.manual_seed(0)
    model = build_model("csnn", channels=[4, 8], hidden=[16], readout="membrane", threshold=0.3, num_steps=4).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = evaluate(model, x, y, attacks=["pgd"], eps=[0.3], steps=5, surrogate=surrogate)
    assert res["results"][0]["robust_accuracy"] < 1.0


def test_checks_catch_a_broken_attack(tiny_model, correct_batch, monkeypatch):
    """An 'attack' that ignores its budget (Gaussian noise) must fail the eps=0 and bound checks."""
    import torchattacks

    from robust_snn.attacks import registry

    broken = registry.AttackSpec("noise", "Linf", "ignores eps", {}, lambda model, eps, p, k, eot: torchattacks.GN(model, std=0.5))
    monkeypatch.setitem(registry.ATTACKS, "noise", broken)
    x, y = correct_batch
    with pytest.warns(RobustnessWarning, match="sanity check failed"):
        res = evaluate(tiny_model, x, y, attacks=["noise"], eps=[0.05])
    failed = {c["name"] for c in res["checks"] if not c["passed"]}
    assert "perturbations within eps and inside [0, 1]" in failed
    assert "eps=0 reproduces clean accuracy" in failed
