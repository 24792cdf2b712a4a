"""One spec language for surrogates, defenses and detectors: syntax, keys from signatures, finite values."""
import pytest

from robust_snn.defenses.blur import GaussianBlur
from robust_snn.defenses.registry import make_preprocessor, parse_detector_spec
from robust_snn.errors import RobustSNNError
from robust_snn.specs import keyword_params, parse_params, split_spec
from robust_snn.surrogates import parse_spec


def test_split_spec_syntax():
    assert split_spec(" Blur : sigma=1.0 , kernel=5 ", what="defense") == ("blur", {"sigma": "1.0", "kernel": "5"})
    assert split_spec("tcc", what="detector") == ("tcc", {})
    for bad in ["", "blur:sigma", "blur:=3", "blur:sigma="]:
        with pytest.raises(RobustSNNError):
            split_spec(bad, what="defense")


def test_allowed_keys_come_from_the_constructor_signature():
    assert set(keyword_params(GaussianBlur)) == {"sigma", "kernel"}
    with pytest.raises(RobustSNNError, match="allowed: kernel, sigma"):
        parse_params("blur", {"radius": "2"}, GaussianBlur, spec="blur:radius=2", what="defense")
    _, params = parse_detector_spec("tcc:fpr=0.1,windows=3")
    assert params == {"fpr": 0.1, "windows": 3} and isinstance(params["windows"], int)


@pytest.mark.parametrize("spec, message", [
    ("blur:sigma=inf", "must be a finite number"),
    ("blur:sigma=nan", "must be a finite number"),
    ("blur:kernel=2.5", "whole number"),
    ("quantize:bits=four", "must be a number"),
    ("tcc:fpr=inf", "must be a finite number"),
])
def test_values_are_checked_in_one_place(spec, message):
    with pytest.raises(RobustSNNError, match=message):
        if spec.startswith("tcc"):
            parse_detector_spec(spec)
        else:
            make_preprocessor(spec)


def test_surrogates_use_the_same_language():
    assert parse_spec("Fast-Sigmoid:slope=5") == ("fast_sigmoid", {"slope": 5.0})
    with pytest.raises(RobustSNNError, match="expected key=value"):
        parse_spec("atan:alpha")
    with pytest.raises(RobustSNNError, match=r"must be a finite number in \(0, "):
        parse_spec("atan:alpha=inf")


def test_attacks_take_hyperparameters_in_the_same_language(tiny_model, eval_batch):
    from robust_snn.attacks import evaluate
    from robust_snn.attacks.registry import parse_attack, split_attack_list

    assert split_attack_list("fgsm, pgd:steps=50,step_scale=2 ,apgd") == ["fgsm", "pgd:steps=50,step_scale=2", "apgd"]
    spec, params = parse_attack("pgd:steps=3,random_start=false")
    assert spec.name == "pgd" and params == {"steps": 3, "random_start": False}
    for bad, msg in [("pgd:steps=0", "integer >= 1"), ("pgd:steps=2.5", "whole number"), ("pgd:radius=2", "allowed: alpha"),
                     ("square:p_init=-1", "positive"), ("pgd:random_start=maybe", "true or false")]:
        with pytest.raises(RobustSNNError, match=msg):
            parse_attack(bad)
    x, y = eval_batch[0][:16], eval_batch[1][:16]
    res = evaluate(tiny_model, x, y, attacks=["pgd:steps=1,random_start=false", "pgd:steps=10"], eps=[0.1], checks=False)
    one, ten = res.row("pgd:steps=1,random_start=false", 0.1), res.row("pgd:steps=10", 0.1)
    assert one["params"]["steps"] == 1 and ten["params"]["steps"] == 10 and not one["params"]["random_start"]
    assert one["robust_accuracy"] <= res.clean_accuracy and ten["robust_accuracy"] <= res.clean_accuracy
