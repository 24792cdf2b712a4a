"""Threat models: budgets, distances, projections and input domains (deterministic extremes)."""
import pytest
import torch

from robust_snn.attacks.registry import ATTACKS
from robust_snn.errors import RobustSNNError
from robust_snn.threat import THREAT_MODELS, get_threat_model


def _images(seed=0, shape=(6, 1, 8, 8)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, eps", [("Linf", 0.1), ("L2", 0.7)])
def test_projection_lands_inside_the_budget_and_the_image_range(name, eps):
    tm = THREAT_MODELS[name]
    x = _images()
    far = x + 3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    p = tm.project(far, x, eps)
    assert tm.within(p, x, eps) and tm.in_domain(p)
    assert tm.distance(p, x).max() > 0.9 * eps  # it moved as far as allowed, not to x
    inside = tm.project(x + 0.5 * (p - x), x, eps)
    assert torch.allclose(inside, x + 0.5 * (p - x), atol=1e-6)  # a point inside stays put
    assert torch.equal(tm.distance(x, x), torch.zeros(len(x)))


def test_distances_on_known_perturbations():
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0], x_adv[0, 0, 1, 1] = 0.3, 0.4
    assert THREAT_MODELS["Linf"].distance(x_adv, x).tolist() == pytest.approx([0.4, 0.0])
    assert THREAT_MODELS["L2"].distance(x_adv, x).tolist() == pytest.approx([0.5, 0.0])


def test_l0_event_budget_counts_flips_and_keeps_the_largest_changes():
    tm = get_threat_model("L0")
    x = (torch.rand(3, 4, 2, 5, 5, generator=torch.Generator().manual_seed(2)) > 0.7).float()  # [B, T, P, H, W]
    x_adv = x.clone()
    x_adv[0, 0, 0, 0, :3] = 1 - x_adv[0, 0, 0, 0, :3]  # three flips
    assert tm.distance(x_adv, x).tolist() == [3.0, 0.0, 0.0] and tm.in_domain(x_adv)
    soft = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    soft[1, 2, 1, 3, 3] = 1 - x[1, 2, 1, 3, 3] + 0.0  # the one decisive change
    p = tm.project(soft, x, 1)
    d = tm.distance(p, x)
    assert tm.in_domain(p) and (d <= 1).all() and d[1] == 1  # at most one flip each; sample 1 keeps its decisive one
    assert p[1, 2, 1, 3, 3] == 1 - x[1, 2, 1, 3, 3]
    assert not tm.in_domain(soft)
    with pytest.raises(RobustSNNError, match="whole number of events"):
        tm.check_budget(2.5)


def test_budget_validation_messages():
    with pytest.raises(RobustSNNError, match=r"eps must be in \[0, 1\]"):
        THREAT_MODELS["Linf"].check_budget(float("nan"))
    with pytest.raises(RobustSNNError, match="L2 eps must be a finite number"):
        THREAT_MODELS["L2"].check_budget(float("inf"))
    with pytest.raises(RobustSNNError, match="unknown threat model 'L1'"):
        get_threat_model("L1")


def test_every_attack_names_a_known_threat_model():
    assert {a.threat.name for a in ATTACKS.values()} == {"Linf", "L2", "L0"}  # event attacks also run under add-only


def test_one_pgd_core_one_step_size_rule(tiny_model, eval_batch):
    from robust_snn.attacks.registry import _PGD_DEFAULTS, _alpha
    from robust_snn.defenses.adversarial import craft, default_alpha
    from robust_snn.pgd import PGD_STEP_SCALE, linf_pgd, step_size, uniform_start

    assert default_alpha("pgd", 0.3, 7) == step_size(0.3, 7) == _alpha(0.3, {**_PGD_DEFAULTS, "steps": 7}) == PGD_STEP_SCALE * 0.3 / 7
    x, y = eval_batch[0][:8], eval_batch[1][:8]
    torch.manual_seed(0)
    ours = craft(tiny_model, x, y, method="pgd", eps=0.1, steps=4)
    torch.manual_seed(0)
    core = linf_pgd(lambda z: torch.nn.functional.cross_entropy(tiny_model(z), y), x, uniform_start(x, 0.1), eps=0.1,
                    alpha=step_size(0.1, 4), steps=4)
    assert torch.equal(ours, core)  # adversarial training crafts with the core
    assert THREAT_MODELS["Linf"].within(core, x, 0.1) and THREAT_MODELS["Linf"].in_domain(core)
    with torch.no_grad():
        assert (tiny_model(core).argmax(1) == y).sum() < (tiny_model(x).argmax(1) == y).sum()  # it is an attack


def test_add_only_counts_added_events_and_refuses_any_removal():
    tm = get_threat_model("add-only")
    x = torch.zeros(3, 2, 2, 3, 3)  # [B, T, P, H, W]
    x[:, 0, 0, 0, 0] = 1  # one event per sample
    x_adv = x.clone()
    x_adv[0, 1, 1, 2, :] = 1  # sample 0: three events added
    x_adv[1, 0, 0, 0, 0] = 0  # sample 1: its event removed
    x_adv[1, 1, 0, 0, 0] = 1  # ... and one added
    assert tm.distance(x_adv, x).tolist() == [3.0, float("inf"), 0.0]
    assert get_threat_model("L0").distance(x_adv, x).tolist() == [3.0, 2.0, 0.0]  # the same flips as L0 counts them
    assert tm.within(x_adv[[0, 2]], x[[0, 2]], 3) and not tm.within(x_adv[[0, 2]], x[[0, 2]], 2)
    assert not tm.within(x_adv, x, 1000)  # a removal is outside the threat model at every budget
    assert tm.in_domain(x_adv) and tm.check_budget(4) == 4.0
    with pytest.raises(RobustSNNError, match="whole number of events"):
        tm.check_budget(-1)
    assert THREAT_MODELS["add-only"] is tm and tm.describe()["units"].startswith("events added")


def test_add_only_projection_reverts_removals_keeps_the_largest_additions_and_rounds():
    tm = get_threat_model("add-only")
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]])
    soft = torch.tensor([[0.9, 0.6, 0.7, 0.2, 0.0, 1.0]])  # three additions above 1/2, one below, one removal
    assert tm.project(soft, x, 2).tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0, 1.0]]  # the two largest additions
    assert tm.project(soft, x, 10).tolist() == [[1.0, 1.0, 1.0, 0.0, 1.0, 1.0]]  # 0.2 rounds away; the removal reverted
    assert torch.equal(tm.project(soft, x, 0), x)
    ties = torch.tensor([[0.8, 0.8, 0.8, 0.0, 1.0, 1.0]])
    assert tm.project(ties, x, 1).sum().item() == 3.0  # one addition kept among equals
    wild = torch.tensor([[3.0, -2.0, 0.0, 0.0, -5.0, 7.0]])  # out of [0, 1]: clipped before projecting
    p = tm.project(wild, x, 5)
    assert p.tolist() == [[1.0, 0.0, 0.0, 0.0, 1.0, 1.0]] and tm.within(p, x, 1) and tm.in_domain(p)
    # on random frames: always binary, within the budget, never an event removed
    g = torch.Generator().manual_seed(4)
    xb = (torch.rand(4, 3, 2, 5, 5, generator=g) > 0.8).float()
    far = xb + torch.randn(xb.shape, generator=g)
    for eps in (0, 1, 7, 40):
        q = tm.project(far, xb, eps)
        assert tm.in_domain(q) and tm.within(q, xb, eps) and bool((q >= xb).all())
        assert tm.distance(q, xb).max() <= eps
