import pytest
import torch
from snntorch import surrogate as snn_surrogate

from robust_snn.errors import RobustSNNError
from robust_snn.models import build_model
from robust_snn.neurons import use_surrogate
from robust_snn.surrogates import ENSEMBLE, canonical, make_spike_fn, parse_spec


def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return x.grad


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model("csnn", channels=[4, 8], hidden=[16], threshold=0.3).eval()


@pytest.mark.parametrize("spec", list(ENSEMBLE))
def test_swap_changes_gradient_not_forward(model, spec):
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        out = model(x)
    g0 = _input_grad(model, x, y)
    with use_surrogate(model, spec):
        with torch.no_grad():
            assert torch.equal(model(x), out)
        g1 = _input_grad(model, x, y)
    assert torch.isfinite(g1).all()
    if spec != "fast_sigmoid:slope=25":
        assert not torch.allclose(g0, g1), f"{spec} should change the input gradient"
    assert torch.equal(_input_grad(model, x, y), g0), "original gradient restored after the context"


def test_restored_after_exception(model):
    before = [(m.neuron.spike_grad, m.grad_mode) for m in model.lif_layers]
    with pytest.raises(ValueError):
        with use_surrogate(model, "rate"):
            assert all(m.grad_mode == "rate" for m in model.lif_layers)
            raise ValueError("boom")
    assert [(m.neuron.spike_grad, m.grad_mode) for m in model.lif_layers] == before


def test_matches_snntorch_surrogate_gradients():
    u = torch.linspace(-1, 1, 41, requires_grad=True)
    for ours, theirs in [("fast_sigmoid:slope=10", snn_surrogate.fast_sigmoid(slope=10)), ("atan", snn_surrogate.atan(alpha=2.0)),
                         ("sigmoid", snn_surrogate.sigmoid(slope=25))]:
        g1 = torch.autograd.grad(make_spike_fn(ours)(u).sum(), u)[0]
        g2 = torch.autograd.grad(theirs(u).sum(), u)[0]
        assert torch.allclose(g1, g2, rtol=1e-5, atol=1e-5), ours


def test_sigmoid_surrogate_stays_finite_far_below_threshold():
    u = torch.tensor([-100.0, -5.0, 0.0, 5.0], requires_grad=True)
    g = torch.autograd.grad(make_spike_fn("sigmoid")(u).sum(), u)[0]
    assert torch.isfinite(g).all() and g[2] == pytest.approx(25 / 4)


def test_triangular_shape():
    u = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    spk = make_spike_fn("triangular:width=1")(u)
    assert spk.tolist() == [0, 0, 0, 1, 1]
    assert torch.autograd.grad(spk.sum(), u)[0].tolist() == [0.0, 0.5, 1.0, 0.5, 0.0]


def test_spec_parsing():
    assert parse_spec("fast-sigmoid:slope=5") == ("fast_sigmoid", {"slope": 5.0})
    assert canonical("atan") == "atan:alpha=2"
    with pytest.raises(RobustSNNError, match="unknown surrogate"):
        parse_spec("relu")
    with pytest.raises(RobustSNNError, match="takes: slope"):
        parse_spec("fast_sigmoid:alpha=3")
    with pytest.raises(RobustSNNError, match="not a spike function"):
        make_spike_fn("rate")


@pytest.mark.parametrize("spec", ["fast_sigmoid", "fast_sigmoid:slope=5", "atan", "atan:alpha=4", "sigmoid",
                                  "sigmoid:slope=3", "triangular", "triangular:width=0.5", "straight_through", "pdsg",
                                  "pdsg:shift=0", "assg", "assg:vanish=0.2,relax=0"])
def test_in_place_derivative_equals_the_surrogate_backward(spec):
    """The fused LIF backward uses ``derivative_``; it must be the surrogate's own gradient."""
    fn = make_spike_fn(spec)
    u = torch.linspace(-4, 4, 4001)
    ug = u.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(fn(ug).sum(), ug)
    got = fn.derivative_(u.clone())
    assert expected.abs().sum() > 0
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spec", ["pdsg", "assg"])
def test_adaptive_surrogates_follow_the_membrane_statistics_of_each_input(spec):
    """PDSG's width and ASSG's sharpness come from the current input's membrane potentials:
    scaling a sample's potentials by c scales its surrogate by 1/c, per sample, whatever its batch companions."""
    fn = make_spike_fn(spec)
    torch.manual_seed(0)
    u = torch.randn(3, 2, 5, 5)
    d = fn.derivative_(u.clone())
    scaled = u.clone()
    scaled[1] *= 4.0
    d_scaled = fn.derivative_(scaled.clone())
    assert torch.allclose(4.0 * d_scaled[1], d[1], rtol=1e-4, atol=1e-7)  # equivariant: the shape follows the statistics
    assert torch.allclose(d_scaled[[0, 2]], d[[0, 2]])  # the other samples do not notice
    assert torch.allclose(fn.derivative_(u[1:2].clone()), d[1:2])  # per sample, not per batch
    fixed = make_spike_fn("atan").derivative_(scaled.clone())  # a fixed surrogate does not adapt
    assert not torch.allclose(4.0 * fixed[1], make_spike_fn("atan").derivative_(u.clone())[1], rtol=1e-2)


@pytest.mark.parametrize("bad", ["fast_sigmoid:slope=nan", "atan:alpha=inf", "fast_sigmoid:slope=-1", "sigmoid:slope=0",
                                 "triangular:width=-inf", "assg:vanish=0.5", "pdsg:shift=nan"])
def test_non_finite_or_out_of_range_parameters_are_refused(bad):
    with pytest.raises(RobustSNNError, match="must be a finite number in"):
        parse_spec(bad)
