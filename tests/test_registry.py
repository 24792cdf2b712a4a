"""One registry type: every name lookup (attacks, surrogates, defenses, detectors, neurons, threat models) goes through it."""
import pytest
import torch
import torchattacks

from robust_snn.attacks.consistency_pgd import ConsistencyPGD
from robust_snn.attacks.cw import CW
from robust_snn.attacks.flip_greedy import GreedyFlip
from robust_snn.attacks.flip_random import RandomFlip
from robust_snn.attacks.registry import ATTACKS, AttackSpec, build_attack, get_spec, parse_attack
from robust_snn.attacks.suite import SUITES, get_suite
from robust_snn.defenses.registry import DETECTORS, PREPROCESSORS, make_preprocessor, parse_detector_spec
from robust_snn.errors import RobustSNNError
from robust_snn.neurons import NEURON_DESCRIPTIONS, NEURONS, make_neuron
from robust_snn.registry import Registry
from robust_snn.surrogates import SURROGATES, parse_spec
from robust_snn.threat import THREAT_MODELS, ImageThreatModel, get_threat_model


def test_registry_is_a_mapping_in_registration_order():
    reg = Registry("colour", {"red": 1, "green": 2})
    reg.register("blue", 3)
    assert list(reg) == reg.names() == ["red", "green", "blue"] and len(reg) == 3
    assert reg["green"] == 2 and dict(reg.items()) == {"red": 1, "green": 2, "blue": 3}
    assert "red" in reg and "mauve" not in reg and ["not", "hashable"] not in reg
    with pytest.raises(KeyError):
        reg["mauve"]
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        reg.register("red", 5)  # register() never overwrites
    assert reg["red"] == 1


def test_a_test_can_patch_an_entry_in_and_out(monkeypatch):
    reg = Registry("colour", {"red": 1})
    with monkeypatch.context() as m:
        m.setitem(reg, "mauve", 7)
        m.setitem(reg, "red", 2)
        assert reg.get("mauve") == 7 and reg.get("red") == 2
    assert dict(reg) == {"red": 1} and reg.names() == ["red"]


def test_registry_get_is_the_one_lookup_with_one_error():
    reg = Registry("colour", [("red", 1), ("green", 2)], normalize=str.lower, also=("none",))
    assert reg.get("RED") == 1  # the user's spelling, normalized
    assert reg.get("mauve", None) is None and reg.get("mauve", 0) == 0  # with a default: like dict.get
    with pytest.raises(RobustSNNError) as e:
        reg.get("Mauve")
    assert str(e.value) == "unknown colour 'Mauve'; choose from: none, red, green"  # the name as typed, every choice
    with pytest.raises(RobustSNNError, match="unknown colour"):
        reg.get(["a", "list"])  # an unhashable value from a config file: the same one line, no TypeError


def test_register_as_a_decorator_returns_the_class():
    reg = Registry("neuron")

    @reg.register("toy")
    class Toy:
        pass

    assert reg.get("toy") is Toy and reg.names() == ["toy"]


def test_every_name_table_is_a_registry():
    for reg, kind in [(ATTACKS, "attack"), (SURROGATES, "surrogate"), (PREPROCESSORS, "defense"), (DETECTORS, "detector"),
                      (NEURONS, "neuron"), (THREAT_MODELS, "threat model"), (SUITES, "suite")]:
        assert isinstance(reg, Registry) and reg.kind == kind and len(reg) >= 1


@pytest.mark.parametrize("lookup, message", [
    (lambda: get_spec("pgdd"), "unknown attack 'pgdd'; choose from: fgsm, pgd, pgd-tcc, "),
    (lambda: parse_attack("pgdd:steps=5"), "unknown attack 'pgdd'; choose from: fgsm, "),
    (lambda: parse_spec("relu:slope=2"), "unknown surrogate 'relu'; choose from: rate, fast_sigmoid, atan, "),
    (lambda: make_preprocessor("median"), "unknown defense 'median'; choose from: none, blur, quantize"),
    (lambda: parse_detector_spec("lid"), "unknown detector 'lid'; choose from: tcc"),
    (lambda: make_neuron("izhikevich"), "unknown neuron 'izhikevich'; choose from: lif, alif, synaptic"),
    (lambda: get_threat_model("L1"), "unknown threat model 'L1'; choose from: Linf, L2, L0"),
    (lambda: get_suite("Strong"), "unknown suite 'Strong'; choose from: standard, validation, quick"),
])
def test_unknown_names_give_the_registry_error(lookup, message):
    with pytest.raises(RobustSNNError) as e:
        lookup()
    assert str(e.value).startswith(message)


def test_attack_names_are_matched_as_the_cli_types_them():
    assert get_spec(" PGD ") is ATTACKS["pgd"] and ATTACKS.get("Square") is ATTACKS["square"]


def test_one_file_per_threat_model_and_neuron_type():
    modules = {name: type(tm).__module__ for name, tm in THREAT_MODELS.items()}
    assert modules == {"Linf": "robust_snn.threat.linf", "L2": "robust_snn.threat.l2", "L0": "robust_snn.threat.l0",
                       "add-only": "robust_snn.threat.add_only"}
    assert all(tm.name == name for name, tm in THREAT_MODELS.items())
    assert {name: cls.__module__ for name, cls in NEURONS.items()} == {
        "lif": "robust_snn.neurons.lif", "alif": "robust_snn.neurons.alif", "synaptic": "robust_snn.neurons.synaptic"}
    assert NEURON_DESCRIPTIONS == {name: cls.description for name, cls in NEURONS.items()} and all(NEURON_DESCRIPTIONS.values())


def test_own_attacks_are_built_by_their_classes():
    """robust-snn's own attacks carry their builder: the registry entry names ``Class.from_params``."""
    for name, cls in [("pgd-tcc", ConsistencyPGD), ("cw", CW), ("flip-greedy", GreedyFlip), ("flip-random", RandomFlip)]:
        assert ATTACKS[name].build == cls.from_params, name
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    cw = build_attack(ATTACKS["cw"], model, 1.0, {**ATTACKS["cw"].defaults, "steps": 7}, n_classes=3)
    assert isinstance(cw, CW) and (cw.steps, cw.c, cw.kappa, cw.lr, cw.search_steps) == (7, 1.0, 1.0, 0.05, 5)
    flip = build_attack(ATTACKS["flip-random"], model, 12.0, dict(ATTACKS["flip-random"].defaults), n_classes=3)
    assert isinstance(flip, RandomFlip) and (flip.budget, flip.trials, flip.seed) == (12, 20, 0)
    greedy = build_attack(ATTACKS["flip-greedy"], model, 9.0, {"per_step": 2}, n_classes=3)
    assert (greedy.budget, greedy.per_step) == (9, 2)


class _SignNoise(torchattacks.attack.Attack):
    """A new attack in its own file would look like this: the class and its ``from_params`` builder."""

    def __init__(self, model, *, eps: float, seed: int = 0) -> None:
        super().__init__("SignNoise", model)
        self.eps, self.seed = eps, seed

    @classmethod
    def from_params(cls, model, eps, params, n_classes, eot_samples):
        return cls(model, eps=eps, seed=int(params["seed"]))

    def forward(self, images, labels):
        g = torch.Generator().manual_seed(self.seed)
        return (images + self.eps * torch.randn(images.shape, generator=g).sign()).clamp(0, 1)


def test_a_new_attack_needs_only_its_class_and_one_spec(tiny_model, eval_batch):
    """No builder function elsewhere: one AttackSpec entry naming the class's builder makes it buildable."""
    spec = AttackSpec("sign-noise", "Linf", "random signs of size eps", {"seed": 0}, _SignNoise.from_params)
    reg = Registry("attack", {**ATTACKS, spec.name: spec})
    assert reg.get("sign-noise").threat is THREAT_MODELS["Linf"]
    x, y = eval_batch
    x, y = x[:16], y[:16]
    atk = build_attack(reg["sign-noise"], tiny_model, 0.1, {"seed": 3}, n_classes=10)
    x_adv = atk(x, y)
    assert spec.threat.within(x_adv, x, 0.1) and spec.threat.in_domain(x_adv) and not torch.equal(x_adv, x)


def test_a_new_threat_model_is_a_subclass_with_a_name():
    class L1Images(ImageThreatModel):
        name, units, description = "L1", "sum of pixel changes", "L1 ball on images in [0, 1]"

        def check_budget(self, eps):
            return float(eps)

        def distance(self, x_adv, x):
            return (x_adv - x).flatten(1).abs().sum(1)

        def project(self, x_adv, x, eps):  # not the exact L1 projection: a shrink, enough for the test
            d = self.distance(x_adv, x).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            return (x + (x_adv - x) * torch.clamp(eps / d, max=1.0)).clamp(0, 1)

    reg = Registry("threat model", THREAT_MODELS)
    reg.register(L1Images.name, L1Images())
    x = torch.full((2, 1, 2, 2), 0.5)
    p = reg.get("L1").project(x + 0.4, x, 0.8)
    assert reg.get("L1").within(p, x, 0.8) and reg.get("L1").in_domain(p)
    assert reg.get("L1").describe() == {"units": "sum of pixel changes", "description": "L1 ball on images in [0, 1]"}
    assert "L1" not in THREAT_MODELS  # the shipped registry is untouched
