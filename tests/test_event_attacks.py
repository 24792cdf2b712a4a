"""Event attacks under the event threat models (L0, add-only), Foolbox-style: one table, every attack x threat x budget.

The table covers every registered event attack (norm ``L0``): a new one is tested by registering it.
Unit rows run on a tiny hand-made classifier (milliseconds); the rows marked ``scnn`` use the
SpikingCNN trained on synthetic N-MNIST by ``tests/test_events.py``'s fixtures.
"""
import json

import pytest
import torch
from click.testing import CliRunner

from robust_snn.attacks.pga import PGA, project_capped
from robust_snn.attacks.pga_prob import ProbPGA
from robust_snn.attacks.registry import ATTACKS, build_attack, event_attack_names
from robust_snn.cli import main
from robust_snn.data import load_split
from robust_snn.errors import RobustSNNError
from robust_snn.threat import THREAT_MODELS


EVENT_ATTACKS = event_attack_names()
THREATS = ("L0", "add-only")
SHAPE = (2, 2, 4, 4)  # [T, P, H, W] of the hand-made frames
#: few iterations on the hand-made model: the table checks contracts, not strength
FAST = {"steps": 5, "samples": 2, "trials": 5}


def _params(name, *, add_only=False, seed=None, **extra):
    spec = ATTACKS[name]
    p = {**spec.defaults, **{k: v for k, v in FAST.items() if k in spec.defaults}, **extra}
    if seed is not None and "seed" in p:
        p["seed"] = seed
    return {**p, "add_only": add_only}


class _Toy(torch.nn.Module):
    """A fixed random linear classifier on flattened binary frames (3 classes)."""

    def __init__(self, seed=0, n=2 * 2 * 4 * 4):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = torch.nn.Linear(n, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(3, n, generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


def _frames(n=12, seed=1):
    return (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) > 0.7).float()


@pytest.fixture(scope="module")
def toy_batch():
    model = _Toy().eval()
    x = _frames()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 3  # two clean-misclassified samples: they must stay misclassified
    return model, x, y


@pytest.mark.parametrize("threat", THREATS)
@pytest.mark.parametrize("name", EVENT_ATTACKS)
def test_every_event_attack_is_binary_within_the_exact_budget_of_every_threat(toy_batch, name, threat):
    model, x, y = toy_batch
    tm = THREAT_MODELS[threat]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
    for budget in (0, 1, 3, 7, 20):
        atk = build_attack(ATTACKS[name], model, budget, _params(name, add_only=threat == "add-only"), n_classes=3)
        adv = atk(x, y)
        assert adv.shape == x.shape and tm.in_domain(adv), (name, budget)
        assert tm.within(adv, x, budget) and THREAT_MODELS["L0"].distance(adv, x).max() <= budget, (name, budget)
        if threat == "add-only":
            assert bool((adv >= x).all()), f"{name} removed an event under add-only"
        if budget == 0:
            assert torch.equal(adv, x), name
        with torch.no_grad():
            assert (model(adv).argmax(1) == y).float().mean() <= clean, (name, budget)  # an attack never helps
            assert bool((model(adv[:2]).argmax(1) != y[:2]).all())  # already wrong: still wrong


@pytest.mark.parametrize("name", EVENT_ATTACKS)
def test_event_attacks_are_deterministic_given_a_seed(toy_batch, name):
    model, x, y = toy_batch
    runs = [build_attack(ATTACKS[name], model, 5, _params(name, seed=3), n_classes=3)(x, y) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("cls", [PGA, ProbPGA])
def test_pga_keeps_the_fewest_flips_that_fool(cls):
    """One entry decides the class; every other flip is irrelevant: the attack returns that one flip."""
    n = 2 * 2 * 4 * 4
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
        model[1].weight[1, 17] = 3.0  # an event at entry 17 makes class 1 win
    x = torch.zeros(4, *SHAPE)
    y = torch.zeros(4, dtype=torch.long)
    for add_only in (False, True):
        adv = cls(model, budget=10, steps=10, add_only=add_only)(x, y)
        assert (adv != x).flatten(1).sum(1).tolist() == [1, 1, 1, 1] and bool((adv.flatten(1)[:, 17] == 1).all())


def test_the_relaxed_budget_projection_is_exact():
    g = torch.Generator().manual_seed(0)
    v = 3 * torch.randn(5, 40, generator=g)
    allowed = torch.rand(5, 40, generator=g) > 0.3
    for budget in (0, 1, 4, 100):
        d = project_capped(v, budget, allowed)
        assert bool((d >= 0).all() & (d <= 1).all()) and bool((d[~allowed] == 0).all())
        assert bool((d.sum(1) <= budget + 1e-4).all())
        inside = v.clamp(0, 1).masked_fill(~allowed, 0).sum(1) <= budget
        assert torch.allclose(d[inside], v.clamp(0, 1).masked_fill(~allowed, 0)[inside])  # a point inside stays put
        assert bool((d.sum(1)[~inside] >= budget - 1e-3).all())  # one outside lands on the boundary


# -- the trained SpikingCNN ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scnn(scnn_checkpoint, synthetic_nmnist):
    from robust_snn import load_model

    model = load_model(scnn_checkpoint)
    x, y = load_split("nmnist", "test", data_dir=synthetic_nmnist, num_steps=6, limit=40)
    return model, x, y


@pytest.mark.parametrize("threat", THREATS)
def test_every_event_attack_breaks_the_trained_scnn_within_the_budget(scnn, threat):
    from robust_snn.attacks import evaluate

    model, x, y = scnn
    res = evaluate(model, x, y, attacks=[f"{a}:steps=20" if "steps" in ATTACKS[a].defaults else a for a in EVENT_ATTACKS],
                   eps_l0=[0, 50], threat=threat, keep_examples=True)
    assert res["threat"] == threat
    tm = THREAT_MODELS[threat]
    for row in res.rows:
        assert row["norm"] == threat and row["within_bound"] and row["in_range"], row["attack"]
        assert row["l0_max"] <= row["eps"] and row["robust_accuracy"] <= res.clean_accuracy, row["attack"]
        adv = res.example(row["attack"], row["eps"])
        assert tm.in_domain(adv) and tm.within(adv, x, row["eps"])
        if row["eps"] == 0:
            assert row["robust_accuracy"] == res.clean_accuracy and torch.equal(adv, x)
        else:  # measured 20-40 points below clean (about 60 %) at 50 events for every attack: wide margin
            assert row["robust_accuracy"] < res.clean_accuracy - 0.05, row
            assert 0 < row["l0_median"] <= 50
    assert res.worst(50, threat)["robust_accuracy"] < res.clean_accuracy - 0.1
    assert [c["name"] for c in res.checks if not c["passed"] and "gradient-free" not in c["name"]] == []


def test_the_events_suite_is_deterministic_given_a_seed(scnn):
    from robust_snn.attacks import evaluate

    model, x, y = scnn
    runs = [evaluate(model, x[:16], y[:16], eps_l0=[10], seed=5, keep_examples=True, checks=False) for _ in range(2)]
    assert [r["robust_accuracy"] for r in runs[0].rows] == [r["robust_accuracy"] for r in runs[1].rows]
    assert all(torch.equal(runs[0]["examples"][k], runs[1]["examples"][k]) for k in runs[0]["examples"])


def test_attack_cli_threat_add_only_reports_rows_l0_and_the_worst_case(scnn_checkpoint, synthetic_nmnist):
    res = CliRunner().invoke(main, ["attack", "--checkpoint", str(scnn_checkpoint), "--data-dir", str(synthetic_nmnist),
                                    "--threat", "add-only", "--budget", "0,30", "--limit", "24", "--steps", "10", "--json",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["suite"] == "events" and data["threat"] == "add-only" and data["robustness_claim"] is False
    from robust_snn.attacks.suite import SUITES

    stages = [st.attack for st in SUITES["events"].stages]
    assert data["stages"] == stages and {"flip-greedy", "sda", "pga", "pga-prob", "spikefool", "flip-random"} <= set(stages)
    rows = {(r["attack"], r["eps"]): r for r in data["results"]}
    assert {a for a, _ in rows} == set(stages)
    for r in rows.values():
        assert r["norm"] == "add-only" and r["within_bound"] and r["params"]["add_only"] is True
        assert "l0_median" in r and r["l0_max"] <= r["eps"]
    worst = {w["eps"]: w for w in data["worst_case"]}
    assert set(worst) == {0.0, 30.0} and all(w["norm"] == "add-only" for w in worst.values())
    assert worst[30.0]["robust_accuracy"] < data["clean_accuracy"] == worst[0.0]["robust_accuracy"]


@pytest.mark.parametrize("args, message", [
    (["--threat", "add-only", "--budget", "5"], "Error: --threat add-only is the threat model of event attacks, but this model "
                                                "takes images: leave --threat out"),
    (["--threat", "l0", "--eps", "0.1"], "Error: --threat l0 is the threat model of event attacks"),
])
def test_threat_on_an_image_model_is_refused_in_one_line(args, message):
    res = CliRunner().invoke(main, ["attack", "--limit", "4", *args])
    assert res.exit_code == 1 and res.output.startswith(message) and len(res.output.strip().splitlines()) == 1, res.output


def test_add_only_contradicted_by_an_attack_parameter_is_refused(scnn):
    from robust_snn.attacks import evaluate

    model, x, y = scnn
    with pytest.raises(RobustSNNError, match="contradicts the add-only threat model"):
        evaluate(model, x[:4], y[:4], attacks=["pga:add_only=false"], eps_l0=[5], threat="add-only")
    with pytest.raises(RobustSNNError, match="unknown event threat model 'l1'"):
        evaluate(model, x[:4], y[:4], attacks=["pga"], eps_l0=[5], threat="l1")


def test_minimum_l0_attack_reports_what_it_found_also_beyond_the_budget(scnn):
    from robust_snn.attacks import evaluate

    model, x, y = scnn
    res = evaluate(model, x[:16], y[:16], attacks=["spikefool:steps=5"], eps_l0=[2, 400], checks=False)
    rows = {r["eps"]: r for r in res.rows}
    small, large = rows[2.0], rows[400.0]
    assert 0.0 < small["found_rate"] <= 1.0 and small["found_rate"] == large["found_rate"]  # the same search, judged by budget
    found = round(small["found_rate"] * small["attacked"])
    assert small["found_l0_median"] is not None and found > small["broken"]  # found beyond the budget: reported, not counted
    assert small["broken"] < large["broken"] <= found
    assert large["robust_accuracy"] < small["robust_accuracy"] <= res["clean_accuracy"]
    assert small["l0_max"] <= 2 and large["l0_max"] <= 400


def test_worst_case_l0_is_the_smallest_breaking_example_per_sample(scnn):
    """Known answer: recompute the worst case's L0 statistics from each attack's kept examples."""
    from robust_snn.attacks import evaluate

    model, x, y = scnn
    x, y = x[:24], y[:24]
    res = evaluate(model, x, y, attacks=["flip-greedy:per_step=2", "flip-random:trials=5"], eps_l0=[30], checks=False,
                   keep_examples=True)
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    best = torch.full((len(y),), float("inf"))
    for name, adv in res["examples"].items():
        with torch.no_grad():
            broke = clean_ok & (model(adv).argmax(1) != y)
        flips = (adv != x).flatten(1).sum(1).float()
        best = torch.where(broke, torch.minimum(best, flips), best)
    found = best[torch.isfinite(best)]
    w = res["worst_case"][0]
    assert len(found) > 0 and w["robust_accuracy"] == (clean_ok.sum().item() - len(found)) / len(y)
    assert w["l0_median"] == float(found.median()) and w["l0_max"] == int(found.max())
