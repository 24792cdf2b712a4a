"""Neuron types behind one interface: LIF, ALIF and Synaptic against snnTorch step loops (and equations)."""
import json

import pytest
import snntorch as snn
import torch
from click.testing import CliRunner

from robust_snn import load_model
from robust_snn.cli import main
from robust_snn.models import build_model
from robust_snn.neurons import ALIF, LIF, NEURONS, SpikingNeuron, Synaptic, make_neuron, use_surrogate
from robust_snn.reference import step_by_step_forward
from robust_snn.surrogates import make_spike_fn

RESETS = ["subtract", "zero", "none"]


def _currents(T=12, shape=(5, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((T, *shape), generator=g) * 1.6 - 0.2).requires_grad_(True)


def _grads(fn, cur):
    spk = fn(cur)
    (g,) = torch.autograd.grad((spk * torch.linspace(0.5, 1.5, spk.shape[-1])).sum(), cur)
    return spk.detach(), g


@pytest.mark.parametrize("reset", RESETS)
def test_synaptic_matches_the_snntorch_step_loop(reset):
    layer = Synaptic(alpha=0.8, beta=0.7, threshold=0.9, surrogate="fast_sigmoid:slope=25", reset_mechanism=reset)
    ref = snn.Synaptic(alpha=0.8, beta=0.7, threshold=0.9, spike_grad=make_spike_fn("fast_sigmoid:slope=25"), reset_mechanism=reset)

    def loop(cur):
        syn = mem = torch.zeros_like(cur[0])
        out = []
        for t in range(cur.shape[0]):
            spk, syn, mem = ref(cur[t], syn, mem)
            out.append(spk)
        return torch.stack(out)

    cur = _currents()
    s1, g1 = _grads(layer, cur)
    s2, g2 = _grads(loop, cur)
    assert torch.equal(s1, s2) and 0 < s1.mean() < 1
    assert torch.allclose(g1, g2, atol=1e-6) and g1.abs().sum() > 0


@pytest.mark.parametrize("reset", RESETS)
def test_alif_without_adaptation_is_snntorch_leaky(reset):
    layer = ALIF(alpha=0.9, adapt=0.0, beta=0.7, threshold=0.9, reset_mechanism=reset)
    ref = snn.Leaky(beta=0.7, threshold=0.9, spike_grad=make_spike_fn("fast_sigmoid:slope=25"), reset_mechanism=reset)

    def loop(cur):
        mem = torch.zeros_like(cur[0])
        out = []
        for t in range(cur.shape[0]):
            spk, mem = ref(cur[t], mem)
            out.append(spk)
        return torch.stack(out)

    cur = _currents(seed=1)
    s1, g1 = _grads(layer, cur)
    s2, g2 = _grads(loop, cur)
    assert torch.equal(s1, s2) and torch.allclose(g1, g2, atol=1e-6)


def test_alif_follows_its_equations_and_adapts():
    alpha, adapt, beta, thr = 0.8, 0.5, 0.9, 1.0
    layer = ALIF(alpha=alpha, adapt=adapt, beta=beta, threshold=thr)
    cur = torch.full((20, 1), 0.6)
    with torch.no_grad():
        spk = layer(cur)
    # the equations, written out independently
    mem, a, s_prev, theta_prev, expect = 0.0, 0.0, 0.0, thr, []
    for t in range(20):
        a = alpha * a + s_prev
        theta = thr + adapt * a
        mem = beta * mem + 0.6 - s_prev * theta_prev
        s = float(mem - theta > 0)
        expect.append(s)
        s_prev, theta_prev = s, theta
    assert spk[:, 0].tolist() == expect
    plain = LIF(beta=beta, threshold=thr)
    with torch.no_grad():
        assert spk.sum() < plain(cur).sum()  # spike-frequency adaptation: fewer spikes than LIF on a constant drive


@pytest.mark.parametrize("neuron", list(NEURONS))
def test_every_neuron_reference_loop_matches_its_forward_and_records(neuron):
    layer = make_neuron(neuron, beta=0.8, threshold=0.7, alpha=0.7, adapt=0.3)
    assert isinstance(layer, SpikingNeuron) and layer.name == neuron
    cur = _currents(T=9, seed=2)
    layer.record = True
    spk = layer(cur)
    ref_spk, ref_mem = layer.reference_forward(cur)
    assert torch.equal(spk, ref_spk) and torch.allclose(layer.last_mem, ref_mem)
    static = cur[0].detach()
    assert torch.equal(layer.forward_static(static, 9), layer(static.expand(9, *static.shape)))
    layer.reset()
    assert layer.last_mem is None


@pytest.mark.parametrize("neuron", ["alif", "synaptic"])
def test_surrogate_swap_changes_only_the_gradient(neuron):
    layer = make_neuron(neuron, beta=0.8, threshold=0.7)
    cur = _currents(seed=3)
    s1, g1 = _grads(layer, cur)
    with use_surrogate(layer, "atan:alpha=2"):
        s2, g2 = _grads(layer, cur)
    with use_surrogate(layer, "rate"):
        s3, g3 = _grads(layer, cur)
    s4, g4 = _grads(layer, cur)
    assert torch.equal(s1, s2) and torch.equal(s1, s3) and not torch.allclose(g1, g2) and not torch.allclose(g1, g3)
    assert torch.equal(g1, g4) and layer.grad_mode == "surrogate"  # restored
    assert torch.isfinite(g3).all()


@pytest.mark.parametrize("neuron", ["alif", "synaptic"])
@pytest.mark.parametrize("encoding", ["direct", "rate"])
def test_models_with_new_neurons_match_the_step_by_step_loop(neuron, encoding):
    torch.manual_seed(0)
    model = build_model("csnn", channels=[4, 8], hidden=[16], neuron=neuron, encoding=encoding, threshold=0.4, num_steps=6).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        if encoding == "rate":  # the same encoder draws for both
            model.encoder.reseed(7)
            x_seq = model.encoder(model.preprocess(x), 6)
            model.encoder.reseed(7)
            fast = model(x)
            ref = step_by_step_forward(model, x, x_seq=x_seq)
        else:
            fast, ref = model(x), step_by_step_forward(model, x)
    assert torch.equal(fast, ref) and fast.sum() > 0
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_config_validates_neuron_keys():
    from robust_snn.errors import RobustSNNError

    with pytest.raises(RobustSNNError, match="unknown neuron 'izhikevich'"):
        build_model("fcsnn", neuron="izhikevich")
    with pytest.raises(RobustSNNError, match="alpha must be in"):
        build_model("fcsnn", neuron="synaptic", alpha=1.5)
    with pytest.raises(RobustSNNError, match="adapt must be"):
        build_model("fcsnn", neuron="alif", adapt=float("nan"))


@pytest.mark.parametrize("neuron", ["alif", "synaptic"])
def test_train_and_attack_end_to_end_with_a_new_neuron(neuron, tmp_path, data_dir):
    out = tmp_path / f"{neuron}.pt"
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--neuron", neuron, "--channels", "4,8", "--hidden", "32", "--num-steps", "4", "--epochs", "2",
                               "--limit", "2000", "--val-split", "0", "--batch-size", "50", "--lr", "1e-2", "--test-limit", "300",
                               "--threshold", "0.5", "--out", str(out), "--data-dir", str(data_dir), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    model = load_model(out)
    assert model.config["neuron"] == neuron and all(type(m) is NEURONS[neuron] for m in model.lif_layers)
    assert model.checkpoint_metrics["test_accuracy"] > 0.3, model.checkpoint_metrics  # chance is 0.1
    res = runner.invoke(main, ["attack", "--checkpoint", str(out), "--attack", "fgsm,pgd", "--eps", "0.2", "--steps", "5",
                               "--limit", "60", "--json", "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    worst = data["worst_case"][0]
    assert worst["robust_accuracy"] < data["clean_accuracy"]
    assert all(c["passed"] for c in data["checks"] if c["name"] == "non-zero input gradients")


def test_info_lists_neurons():
    res = CliRunner().invoke(main, ["info", "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.output)["neurons"]) == {"lif", "alif", "synaptic"}
