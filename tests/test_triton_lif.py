"""The fused Triton LIF against the CPU reference: exact spikes and membranes, gradients within float tolerance.

On CPU these run the kernels through Triton's interpreter (``TRITON_INTERPRET=1``); with a GPU
they also run compiled on CUDA. Test names contain ``triton`` (``pytest -k triton``).
"""
import pytest
import torch

import robust_snn
from robust_snn.data import bundled_test_split
from robust_snn.neurons import triton_lif
from robust_snn.neurons.lif import LIF, _FusedLIF

pytestmark = pytest.mark.skipif(triton_lif.triton is None, reason="needs Triton (torch's Linux wheels bring it)")

SURROGATES = ["fast_sigmoid:slope=25", "fast_sigmoid:slope=5", "atan", "sigmoid", "triangular", "straight_through", "pdsg", "assg"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def interpret(monkeypatch):
    """Triton kernels on CPU tensors through the interpreter, and the LIF layers' automatic choice switched on."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ROBUST_SNN_TRITON", "1")


def _inputs(shape, device, *, static, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    cur = (torch.randn(shape, generator=g) * 1.5 + 0.4).to(device)
    if channels_last:
        cur = cur.contiguous(memory_format=torch.channels_last) if static else \
            cur.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(cur.shape)
    return cur


def _run(fn, cur, *, reset, spike_fn, T, static, beta=0.7, thr=1.0):
    cur = cur.detach().clone().requires_grad_(True)
    spk, mem = fn.apply(cur, beta, thr, reset, spike_fn, T, static, True)
    g = torch.Generator().manual_seed(1)
    w_spk = torch.randn(spk.shape, generator=g).to(cur.device)
    w_mem = torch.randn(mem.shape, generator=g).to(cur.device)
    ((spk * w_spk).sum() + (mem * w_mem).sum()).backward()
    return spk.detach(), mem.detach(), cur.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reset", [0, 1, 2])
@pytest.mark.parametrize("static", [False, True])
def test_triton_lif_matches_the_fused_cpu_path_exactly_forward_and_closely_backward(interpret, monkeypatch, device, reset, static):
    if device == "cuda":  # compiled for the GPU, not interpreted
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    T, shape = 6, (5, 3, 4, 4)
    cur = _inputs(shape if static else (T, *shape), device, static=static, channels_last=True)
    spike_fn = robust_snn.surrogates.make_spike_fn("fast_sigmoid:slope=25")
    ref = _run(_FusedLIF, cur.cpu(), reset=reset, spike_fn=spike_fn, T=T, static=static)
    out = _run(triton_lif.TritonLIF, cur, reset=reset, spike_fn=spike_fn, T=T, static=static)
    assert torch.equal(out[0].cpu(), ref[0]), "spikes differ"
    assert torch.equal(out[1].cpu(), ref[1]), "membranes differ"
    assert 0 < int(ref[0].sum()) < ref[0].numel(), "the test input should make some neurons fire and some not"
    torch.testing.assert_close(out[2].cpu(), ref[2], rtol=1e-5, atol=1e-5)
    assert out[2].shape == cur.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", SURROGATES)
def test_triton_lif_surrogate_derivatives_match_each_surrogates_backward(interpret, monkeypatch, spec, device):
    if device == "cuda":  # compiled for the GPU, not interpreted
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    T, shape = 5, (4, 37)  # 148 neurons: not a multiple of the block, so the tail mask is exercised
    cur = _inputs((T, *shape), device, static=False, seed=3)
    spike_fn = robust_snn.surrogates.make_spike_fn(spec)
    ref = _run(_FusedLIF, cur.cpu(), reset=0, spike_fn=spike_fn, T=T, static=False)
    out = [t.cpu() for t in _run(triton_lif.TritonLIF, cur, reset=0, spike_fn=spike_fn, T=T, static=False)]
    assert torch.equal(out[0], ref[0])
    torch.testing.assert_close(out[2], ref[2], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out[2]).all() and out[2].abs().sum() > 0


def test_triton_lif_surrogate_codes_cover_the_in_kernel_surrogates():
    code, p = triton_lif.surrogate_code(robust_snn.surrogates.make_spike_fn("atan:alpha=3"))
    assert (code, p) == (triton_lif.SURROGATE_CODES["atan"], 3.0)
    assert triton_lif.surrogate_code(robust_snn.surrogates.make_spike_fn("assg"))[0] == triton_lif.PRECOMPUTED
    assert triton_lif.surrogate_code(lambda u: (u > 0).float())[0] == triton_lif.PRECOMPUTED  # anything else: torch computes s'


def test_triton_lif_is_chosen_only_when_enabled(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv("ROBUST_SNN_TRITON", raising=False)
    assert not triton_lif.enabled_for(x)  # CPU tensors: the CPU path unless asked for under the interpreter
    monkeypatch.setenv("ROBUST_SNN_TRITON", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_lif.enabled_for(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_lif.enabled_for(x)
    assert not triton_lif.enabled_for(x.double())  # float32 only
    monkeypatch.setenv("ROBUST_SNN_TRITON", "0")
    assert not triton_lif.enabled_for(x)


@pytest.mark.parametrize("device", DEVICES)
def test_triton_lif_whole_model_logits_and_input_gradients_match(interpret, monkeypatch, device):
    if device == "cuda":  # compiled for the GPU, not interpreted
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    model = robust_snn.load_model(device=device).eval()  # the shipped CSNN (bundled): real spiking activity in every layer
    x, y = bundled_test_split()
    x, y = x[:3].to(device), y[:3].to(device)
    calls = []
    real = triton_lif.TritonLIF.apply
    monkeypatch.setattr(triton_lif.TritonLIF, "apply", lambda *a: calls.append(1) or real(*a))

    def logits_and_grad():
        xx = x.clone().requires_grad_(True)
        out = model(xx)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), xx)
        return out.detach(), g

    out, g = logits_and_grad()
    assert len(calls) == len(model.lif_layers), "every LIF layer should run the Triton kernel"
    monkeypatch.setenv("ROBUST_SNN_TRITON", "0")
    ref_out, ref_g = logits_and_grad()
    assert len(calls) == len(model.lif_layers)  # switched off: the CPU path ran
    assert torch.equal(out, ref_out)
    assert torch.equal(out.argmax(1), y)  # the shipped model gets these three right
    assert g.abs().sum() > 0
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-6)


def test_triton_lif_layer_without_gradient_keeps_no_membrane(interpret):
    layer = LIF(beta=0.5, threshold=1.0)
    cur = _inputs((4, 2, 9), "cpu", static=False)
    with torch.no_grad():
        spk = layer(cur)
    ref = LIF(beta=0.5, threshold=1.0)
    ref.fused = False
    assert torch.equal(spk, ref(cur))
    assert layer.last_mem is None


def test_triton_lif_gradient_is_zero_not_nan_where_the_membrane_is_infinite(interpret):
    cur = torch.tensor([[[float("inf"), 0.5, -float("inf")]]] * 3)  # [T=3, B=1, 3]
    spike_fn = robust_snn.surrogates.make_spike_fn("fast_sigmoid")
    ref = _run(_FusedLIF, cur, reset=2, spike_fn=spike_fn, T=3, static=False)
    out = _run(triton_lif.TritonLIF, cur, reset=2, spike_fn=spike_fn, T=3, static=False)
    assert torch.equal(out[0], ref[0])
    assert not torch.isnan(out[2]).any()
    torch.testing.assert_close(out[2], ref[2])


def test_triton_lif_leaves_sequences_beyond_32_bit_offsets_to_the_torch_path(monkeypatch):
    monkeypatch.setenv("ROBUST_SNN_TRITON", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.zeros(4, 8)
    assert triton_lif.enabled_for(x) and triton_lif.enabled_for(x, elements=triton_lif.MAX_ELEMENTS)
    assert not triton_lif.enabled_for(x, elements=triton_lif.MAX_ELEMENTS + 1)
