"""The N-MNIST seed's SpikingResNet (``--model sresnet``): structure, contract, gradients, training, checkpoints."""
import pytest
import torch
from click.testing import CliRunner

from robust_snn.errors import RobustSNNError
from robust_snn.models import build_model
from robust_snn.neurons import ALIF, LIF, Synaptic
from robust_snn.training import spike_loss


def events_model(**kw):
    """A small sresnet on N-MNIST-shaped event tensors [B, T, 2, 34, 34]."""
    cfg = dict(input="events", in_channels=2, image_size=[34, 34], channels=[4, 8, 8], hidden=[16], num_steps=5)
    return build_model("sresnet", **{**cfg, **kw})


def calibrated(model, x):
    """Batch-norm statistics from ``x`` (an untrained network's running stats leave it silent in eval mode)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def random_events(b=3, t=5, hw=34, p=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, t, 2, hw, hw, generator=g) < p).float()


def test_sresnet_forward_shapes_for_events_and_images():
    torch.manual_seed(0)
    x = random_events()
    model = calibrated(events_model(threshold=0.3), x)
    logits, rec = model(x, record=True)
    assert logits.shape == (3, 10) and logits.sum() > 0
    assert rec.names == ["conv1", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2", "fc1", "output"]
    shapes = [tuple(s.shape) for s in rec.spikes]
    assert shapes == [(5, 3, 4, 17, 17), (5, 3, 8, 9, 9), (5, 3, 8, 9, 9), (5, 3, 8, 5, 5), (5, 3, 8, 5, 5), (5, 3, 16), (5, 3, 10)]
    assert all(m is not None and m.shape == s.shape for m, s in zip(rec.mems, rec.spikes))
    image_model = build_model("sresnet", channels=[4, 8, 8], hidden=[16], num_steps=4)  # images fall out: 28 -> 14 -> 7 -> 4
    assert image_model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_sresnet_neurons_and_residual_wiring_follow_the_seed():
    model = events_model()
    assert [type(m) for m in model.lif_layers] == [ALIF, LIF, LIF, LIF, LIF, Synaptic, LIF]
    assert [(k, s.skip) for k, s in enumerate(model.stages) if s.shortcut is not None] == [(2, 1), (4, 3)]
    cfg = events_model(beta=0.7, threshold=0.8, alpha=0.6, adapt=0.3).lif_layers
    assert float(cfg[0].alpha) == pytest.approx(0.6) and float(cfg[0].adapt) == pytest.approx(0.3)
    assert float(cfg[5].neuron.alpha) == pytest.approx(0.6) and all(float(m.neuron.beta) == pytest.approx(0.7) for m in cfg)
    assert all(float(m.neuron.threshold) == pytest.approx(0.8) for m in cfg)
    for kw, msg in (({"neuron": "alif"}, "sresnet fixes its neurons"), ({"channels": [4, 8]}, "exactly 3 channel widths"),
                    ({"hidden": [16, 16]}, "exactly 1 hidden width")):
        with pytest.raises(RobustSNNError, match=msg):
            events_model(**kw)


def step_by_step(model, x):
    """Reference: every layer at every time step, the shortcut adding currents before the block's second neuron."""
    x_seq = x.transpose(0, 1)
    states = [None] * len(model.stages)
    out = 0
    for t in range(x_seq.shape[0]):
        h, inputs = x_seq[t], []
        for k, stage in enumerate(model.stages):
            inputs.append(h)
            cur = stage.layers(h)
            if stage.shortcut is not None:
                cur = cur + stage.shortcut(inputs[stage.skip])
            state = states[k] if states[k] is not None else stage.lif.init_state(cur)
            h, states[k] = stage.lif.step(cur, state)
        out = out + h
    return out


def test_sresnet_matches_a_step_by_step_loop_and_resets_every_call():
    torch.manual_seed(0)
    x = random_events()
    model = calibrated(events_model(threshold=0.3), x)
    a = model(x)
    assert a.sum() > 0, "test must exercise spiking"
    with torch.no_grad():
        assert torch.allclose(a, step_by_step(model, x), atol=1e-5)
        model(random_events(b=6, t=7, seed=1))  # another batch and T in between
    assert torch.equal(a, model(x))
    with torch.no_grad():  # the skip matters: without the shortcut's current, another output
        for s in model.stages:
            if s.shortcut is not None:
                s.shortcut[0].weight.mul_(0)
    assert not torch.equal(a, model(x))


def test_sresnet_gradients_are_finite_for_input_and_every_parameter():
    torch.manual_seed(0)
    model = events_model(threshold=0.5).train()
    x = random_events(b=8).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 10)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def quadrant_events(n, *, seed, t=6, hw=16):
    """Class k: dense events of polarity k % 2 in quadrant k, over 5 % background noise (4 classes)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = (torch.rand(n, t, 2, hw, hw, generator=g) < 0.05).float()
    q = hw // 2
    for i, k in enumerate(y.tolist()):
        r, c = (k // 2) * q, (k % 2) * q
        x[i, :, k % 2, r:r + q, c:c + q] = (torch.rand(t, q, q, generator=g) < 0.5).float()
    return x, y


def test_sresnet_trains_on_tiny_synthetic_events():
    torch.manual_seed(0)
    x, y = quadrant_events(64, seed=0)
    model = build_model("sresnet", input="events", in_channels=2, image_size=[16, 16], num_classes=4, channels=[4, 8, 8],
                        hidden=[16], num_steps=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        model.train()
        loss = spike_loss(model(x), y, kind="ce", num_steps=6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    xt, yt = quadrant_events(64, seed=1)
    with torch.no_grad():
        acc = (model.eval()(xt).argmax(1) == yt).float().mean().item()
    # measured: loss 1.39 -> 0.17, held-out accuracy 86 %; chance is 25 %
    assert losses[-1] < 0.6 * losses[0] and acc >= 0.5, (losses, acc)


def test_sresnet_checkpoint_round_trip(tmp_path):
    from robust_snn import load_model
    from robust_snn.checkpoint import save_checkpoint

    torch.manual_seed(0)
    x = random_events()
    model = calibrated(events_model(threshold=0.3), x)
    save_checkpoint(tmp_path / "s.pt", model, metrics={"test_accuracy": 0.1})
    back = load_model(tmp_path / "s.pt")  # torch.load(weights_only=True)
    assert back.config == model.config and back.config["arch"] == "sresnet"
    assert [type(m) for m in back.lif_layers] == [type(m) for m in model.lif_layers]
    assert torch.equal(back(x), model(x)) and model(x).sum() > 0


@pytest.fixture(scope="module")
def tiny_nmnist_train(tmp_path_factory, data_dir):
    from robust_snn.events import make_nmnist

    root = tmp_path_factory.mktemp("nmnist")
    make_nmnist(root, split="train", limit=60, seed=0, data_dir=str(data_dir))
    return root


@pytest.mark.parametrize("arch", ["scnn", "sresnet"])
def test_seed_training_options_exist_for_both_event_models(arch, tiny_nmnist_train, tmp_path, monkeypatch):
    """The seed's options: optimizer, loss (ce/mse/count), scheduler, weight decay, dropout, beta/threshold/alpha, resume, test-only."""
    from robust_snn.cli import main
    from robust_snn.data import synthetic_note

    monkeypatch.setenv("ROBUST_SNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUST_SNN_DATA", str(tmp_path / "no-data"))  # no N-MNIST test files: the synthetic default
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    for opt in ("--optimizer", "--loss", "--scheduler", "--weight-decay", "--dropout", "--beta", "--threshold", "--alpha", "--resume",
                "--test-only", "sresnet"):
        assert opt in help_text, opt
    out = tmp_path / f"{arch}.pt"
    args = ["train", "--model", arch, "--dataset", "nmnist", "--data-dir", str(tiny_nmnist_train), "--channels", "4,8,8",
            "--hidden", "16", "--num-steps", "4", "--epochs", "1", "--batch-size", "20", "--val-split", "0", "--test-limit", "20",
            "--optimizer", "sgd", "--loss", "count", "--scheduler", "step", "--weight-decay", "1e-4", "--dropout", "0.1",
            "--beta", "0.6", "--threshold", "0.7", "--alpha", "0.8", "--out", str(out), "--quiet", "--device", "cpu"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    from robust_snn import load_model

    model = load_model(out)
    assert model.config["arch"] == arch and model.config["dropout"] == 0.1 and model.config["alpha"] == 0.8
    assert model.checkpoint_recipe["optimizer"] == "sgd" and model.checkpoint_recipe["loss"] == "count"
    only = CliRunner().invoke(main, ["train", "--dataset", "nmnist", "--out", str(out), "--test-only", "--test-limit", "20", "--quiet"])
    assert only.exit_code == 0, only.output
    assert f"test accuracy {100 * model.checkpoint_metrics['test_accuracy']:.2f}% (n=20; data: {synthetic_note()})" in only.output
    wrong = CliRunner().invoke(main, ["train", "--out", str(out), "--test-only"])  # --dataset mnist: not what it was trained on
    assert wrong.exit_code == 1 and "pass --dataset nmnist" in wrong.output


def test_sresnet_equals_the_step_by_step_reference_loop_with_its_shortcuts():
    import torch

    from robust_snn import build_model
    from robust_snn.reference import step_by_step_forward

    torch.manual_seed(0)
    model = build_model("sresnet", input="events", in_channels=2, image_size=[34, 34], num_steps=4, threshold=0.5).eval()
    with torch.no_grad():
        for m in model.modules():  # scale up so that spikes reach the output
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.mul_(3.0)
        x = (torch.rand(3, 4, 2, 34, 34) < 0.3).float()
        out = model(x)
        ref = step_by_step_forward(model, x)
    assert out.sum() > 0
    torch.testing.assert_close(out, ref)
