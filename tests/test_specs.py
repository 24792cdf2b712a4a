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
