"""robust-snn's APGD / APGD-T: torchattacks' algorithm, minus the work on already-broken samples."""
import pytest
import torch
import torchattacks

from robust_snn.attacks.apgd import APGD
from robust_snn.attacks.apgdt import APGDT


class CountingModel(torch.nn.Module):
    """Records the batch size of every call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.sizes = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


@pytest.fixture()
def batch64(tiny_model, mnist_test):
    """The tiny model in float64 (no rounding ties between batch sizes) and 32 images it classifies correctly."""
    model = tiny_model.double().eval()
    x, y = mnist_test
    x, y = x[:200].double(), y[:200]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:32], y[ok][:32]


def _robust(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_matches_torchattacks_without_early_exit(batch64, loss):
    model, x, y = batch64
    ref = torchattacks.APGD(model, norm="Linf", eps=0.1, steps=12, n_restarts=1, seed=0, loss=loss)(x, y)
    ours = APGD(model, eps=0.1, steps=12, loss=loss, early_exit=False)(x, y)
    assert torch.allclose(ref, ours, rtol=0, atol=1e-7)  # the same run (ours projects the random start exactly)


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_early_exit_breaks_the_same_samples_with_fewer_evaluations(batch64, loss):
    model, x, y = batch64
    eps, steps = 0.15, 12
    ref = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, loss=loss)(x, y)
    counted = CountingModel(model)
    ours = APGD(counted, eps=eps, steps=steps, loss=loss)(x, y)
    robust_ref, robust_ours = _robust(model, ref, y), _robust(model, ours, y)
    assert robust_ref.float().mean() < 1.0  # the attack breaks some samples, or the test shows nothing
    assert torch.equal(robust_ref, robust_ours)
    assert (ours - x).abs().max() <= eps + 1e-12 and ours.min() >= 0 and ours.max() <= 1
    # torchattacks: 1 clean pass + (1 + steps) gradient passes on the whole batch
    full = len(x) * (2 + steps)
    assert sum(counted.sizes) < full
    assert int(robust_ours.sum()) <= counted.sizes[-1] < len(x)  # the last pass: the unbroken and those it broke


def test_apgdt_matches_torchattacks(batch64):
    model, x, y = batch64
    ref_atk = torchattacks.APGDT(model, norm="Linf", eps=0.15, steps=10, n_restarts=1, seed=0, n_classes=10)
    ref_atk.n_target_classes = 3
    ref = ref_atk(x, y)
    assert torch.allclose(ref, APGDT(model, eps=0.15, steps=10, targets=3, early_exit=False)(x, y), rtol=0, atol=1e-7)
    ours = APGDT(model, eps=0.15, steps=10, targets=3)(x, y)
    assert torch.equal(_robust(model, ref, y), _robust(model, ours, y))
    assert _robust(model, ours, y).float().mean() < 1.0


def test_every_sample_broken_at_the_start_stops_at_once(tiny_model, mnist_test):
    """A huge budget misclassifies everything at the random start: no gradient steps follow."""
    x, y = mnist_test
    counted = CountingModel(tiny_model.eval())
    x_adv = APGD(counted, eps=1.0, steps=50, loss="ce")(x[:16], (y[:16] + 1) % 10)
    assert x_adv.shape == (16, 1, 28, 28)
    # 1 clean pass + 1 pass at the random start (+ passes only for samples the random start did not break)
    assert len(counted.sizes) < 50


def test_l2_is_refused(tiny_model, mnist_test):
    x, y = mnist_test
    atk = APGD(tiny_model, eps=0.5, steps=2)
    atk.norm = "L2"
    with pytest.raises(ValueError, match="L∞"):
        atk(x[:4], y[:4])


def test_registry_turns_early_exit_off_for_stochastic_models(tiny_model):
    from robust_snn.attacks.registry import attack_params, build_attack, get_spec

    for name in ("apgd", "apgd-dlr", "apgdt"):
        spec = get_spec(name)
        params = attack_params(spec, steps=5)
        assert build_attack(spec, tiny_model, 0.1, params, n_classes=10, eot_samples=1).early_exit
        # a stochastic encoder (EOT over 4 draws): one noisy misclassification is not final
        assert not build_attack(spec, tiny_model, 0.1, params, n_classes=10, eot_samples=4).early_exit


@pytest.mark.parametrize("stochastic", [False, True])
def test_evaluate_keeps_full_length_runs_for_stochastic_models_even_with_one_eot_sample(stochastic, monkeypatch):
    import importlib

    from robust_snn.models import build_model

    ev = importlib.import_module("robust_snn.attacks.evaluate")
    built = []
    real = ev.build_attack
    monkeypatch.setattr(ev, "build_attack", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    torch.manual_seed(0)
    model = build_model("csnn", channels=[4, 8], hidden=[16], encoding="rate" if stochastic else "direct", threshold=0.3,
                        num_steps=4).eval()
    x = torch.rand(4, 1, 28, 28) * 0.8 + 0.1
    with torch.no_grad():
        y = model(x).argmax(1)
    ev.evaluate(model, x, y, attacks=["apgd"], eps=[0.1], steps=2, eot_samples=1, samples=1, checks=False)
    apgd = [a for a in built if isinstance(a, APGD)]
    assert apgd and all(a.early_exit is (not stochastic) for a in apgd)


def test_unknown_loss_is_refused(tiny_model):
    with pytest.raises(ValueError, match="unknown APGD loss"):
        APGD(tiny_model, eps=0.1, loss="CE")


def test_restarts_draw_new_random_starts(tiny_model, mnist_test, monkeypatch):
    """torchattacks' APGD reseeds itself with ``self.seed`` on every call: each restart must get its own seed."""
    x, y = mnist_test
    seeds = []
    real = APGD.perturb

    def spy(self, *args, **kwargs):
        seeds.append(self.seed)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(APGD, "perturb", spy)
    from robust_snn.attacks import evaluate

    evaluate(tiny_model, x[:16], y[:16], attacks=["apgd:seed=7"], eps=[0.02], steps=2, restarts=3,
             checks=False)
    assert len(seeds) >= 2  # at eps 0.02 the tiny model keeps most images after the first run
    assert seeds == [7, 8, 9][:len(seeds)]  # one run per restart, each from a new seed
