"""GraphedClassifier: the replay contract (padding, keys, copies, stale-buffer guard, fallbacks) on CPU.

The ``eager`` backend keeps the CUDA backend's static-buffer contract (inputs copied into a padded
buffer, outputs and gradients read back from buffers the next replay overwrites) and computes it
with the model itself, so everything here holds for both; the CUDA graphs themselves are checked
on a GPU by ``benchmarks/bench.py`` (graphed vs eager logits and gradients, asserted equal).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from robust_snn.attacks import evaluate
from robust_snn.graphs import GraphedClassifier, bucket_size
from robust_snn.models import build_model
from robust_snn.neurons import use_surrogate


def _input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.fixture()
def small():
    torch.manual_seed(0)
    return build_model(arch="csnn", channels=[4, 8], hidden=[16], num_steps=4).eval()


def test_bucket_size_extremes():
    assert [bucket_size(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 100, 129, 256, 257)] == \
        [1, 2, 3, 4, 6, 6, 8, 8, 12, 16, 24, 128, 192, 256, 384]
    for n in range(1, 3000):
        b = bucket_size(n)
        assert n <= b <= math.ceil(1.5 * n) + 1, n
    with pytest.raises(ValueError):
        bucket_size(0)


def test_logits_and_gradients_equal_the_model(tiny_model, eval_batch):
    x, y = eval_batch[0][:16], eval_batch[1][:16]  # a bucket size: the same computation as the model's
    g = GraphedClassifier(tiny_model.eval(), backend="eager")
    with torch.no_grad():
        assert torch.equal(g(x), tiny_model(x))
    torch.testing.assert_close(_input_grad(g, x, y), _input_grad(tiny_model, x, y), rtol=1e-5, atol=1e-7)
    assert g.stats["captures"] == 2 and g.stats["eager"] == 0  # one no-grad and one gradient graph


def test_padding_rows_do_not_leak_into_results(small):
    torch.manual_seed(1)
    g = GraphedClassifier(small, backend="eager")
    big, few = torch.rand(16, 1, 28, 28), torch.rand(13, 1, 28, 28)
    y = torch.randint(0, 10, (13,))
    _input_grad(g, big, torch.randint(0, 10, (16,)))  # fills the buffer with other images
    padded = torch.cat([few, big[13:]])  # a batch of 16 as the replay's (rows do not affect each other; the size does)
    with torch.no_grad():
        assert torch.equal(g(few), small(padded)[:13])
    y16 = torch.cat([y, torch.zeros(3, dtype=torch.long)])
    xp = padded.clone().requires_grad_(True)
    out = small(xp)
    # the padding rows' gradient is zero and their logits are not part of the loss
    (ref,) = torch.autograd.grad(F.cross_entropy(out[:13], y16[:13], reduction="sum") / 13, xp)
    assert torch.equal(_input_grad(g, few, y), ref[:13])
    assert g.stats["captures"] == 2  # 13 and 16 share the bucket of 16: one gradient graph, one no-grad graph


def test_surrogate_switch_changes_the_graph_and_new_spike_fn_objects_reuse_it(small):
    torch.manual_seed(2)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    g = GraphedClassifier(small, backend="eager")
    own = _input_grad(g, x, y)
    with use_surrogate(small, "atan:alpha=2"):
        atan = _input_grad(g, x, y)
        assert torch.equal(atan, _input_grad(small, x, y))
    assert not torch.equal(own, atan)
    with use_surrogate(small, "atan:alpha=2"):  # a fresh spike function object, same surrogate
        assert torch.equal(_input_grad(g, x, y), atan)
    assert g.stats["captures"] == 2
    assert torch.equal(_input_grad(g, x, y), own)


def test_outputs_and_gradients_are_copies(small):
    torch.manual_seed(3)
    g = GraphedClassifier(small, backend="eager")
    a, b = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        out_a = g(a)
        kept = out_a.clone()
        g(b)
    assert torch.equal(out_a, kept)
    y = torch.randint(0, 10, (4,))
    ga = _input_grad(g, a, y)
    kept = ga.clone()
    _input_grad(g, b, y)
    assert torch.equal(ga, kept)


def test_backward_after_an_overwriting_call_raises(small):
    torch.manual_seed(4)
    g = GraphedClassifier(small, backend="eager")
    xa = torch.rand(4, 1, 28, 28, requires_grad=True)
    xb = torch.rand(4, 1, 28, 28, requires_grad=True)
    out_a = g(xa)
    g(xb)  # same bucket: overwrites the activations out_a's backward needs
    with pytest.raises(RuntimeError, match="called again"):
        out_a.sum().backward()


def _replace_conv_weight(m):
    conv = next(l for l in m.modules() if isinstance(l, torch.nn.Conv2d))
    conv.weight.data = conv.weight.data * 2  # new storage


def _lower_threshold_in_place(m):
    m.lif_layers[0].neuron.threshold.fill_(0.5)  # same storage, other value: baked into a graph as a number


def _membrane_readout(m):
    m.readout = "membrane"


@pytest.mark.parametrize("change", [_replace_conv_weight, _lower_threshold_in_place, _membrane_readout])
def test_a_change_of_the_computation_gets_a_new_graph(tiny_model, eval_batch, change):
    x = eval_batch[0][:4]
    model = tiny_model.eval()  # trained: it fires, so every change shows in the logits
    g = GraphedClassifier(model, backend="eager")
    with torch.no_grad():
        before = g(x)
        change(model)
        after = g(x)
        assert torch.equal(after, model(x)) and not torch.equal(after, before)
    assert g.stats["captures"] == 2


def test_what_graphs_do_not_cover_runs_the_model(small):
    torch.manual_seed(6)
    x = torch.rand(4, 1, 28, 28)
    cuda_only = GraphedClassifier(small, backend="cuda")  # CPU tensors: the model itself
    with torch.no_grad():
        assert torch.equal(cuda_only(x), small(x))
    assert cuda_only.stats == {"captures": 0, "replays": 0, "eager": 1, "failed": 0}
    g = GraphedClassifier(small, backend="eager")
    with torch.no_grad():
        logits, rec = g(x, record=True)  # keyword arguments
        assert torch.equal(logits, small(x))
    small.train()
    with torch.no_grad():
        g(x)  # training mode
    small.eval()
    rate = build_model(arch="csnn", channels=[4, 8], hidden=[16], num_steps=4, encoding="rate").eval()
    gr = GraphedClassifier(rate, backend="eager")
    with torch.no_grad():
        gr(x)  # a stochastic encoder
    assert g.stats["eager"] == 2 and gr.stats["eager"] == 1 and gr.stats["captures"] == 0
    with pytest.raises(ValueError, match="unknown graph backend"):
        GraphedClassifier(small, backend="xla")


def test_input_checks_still_refuse_bad_images(small):
    from robust_snn.errors import RobustSNNError

    g = GraphedClassifier(small, backend="eager")
    with pytest.raises(RobustSNNError, match=r"\[0, 1\]"):
        g(torch.full((2, 1, 28, 28), 255.0))


def test_least_recently_used_graph_is_dropped(small):
    g = GraphedClassifier(small, backend="eager", max_graphs=2)
    with torch.no_grad():
        for n in (1, 2, 3, 1):
            g(torch.rand(n, 1, 28, 28))
    assert g.stats["captures"] == 4 and len(g._captures) == 2  # batch 1 was dropped, then captured again


def test_evaluate_through_the_replay_gives_the_same_result(tiny_model, eval_batch, monkeypatch):
    import importlib

    evaluate_module = importlib.import_module("robust_snn.attacks.evaluate")  # the module (the package exports the function)

    built = []
    real_build = evaluate_module.build_attack

    def spy(*args, **kwargs):
        atk = real_build(*args, **kwargs)
        built.append(atk)
        return atk

    monkeypatch.setattr(evaluate_module, "build_attack", spy)
    x, y = eval_batch[0][:40], eval_batch[1][:40]
    kw = dict(attacks=["pgd:steps=5", "apgd:steps=5"], eps=[0.1], surrogate="ensemble", batch_size=16, checks=False)
    plain = evaluate(tiny_model, x, y, **kw)
    n_plain = len(built)
    graphed = evaluate(tiny_model, x, y, graphs="eager", **kw)
    # the same attack settings (APGD's early exit stays on: the replay judges the model it attacks)
    assert [getattr(a, "early_exit", None) for a in built[n_plain:]] == [getattr(a, "early_exit", None) for a in built[:n_plain]]
    assert any(getattr(a, "early_exit", False) for a in built)
    assert plain["graphs"] is None and graphed["graphs"]["backend"] == "eager"
    assert graphed["graphs"]["replays"] > 0 and graphed["graphs"]["failed"] == 0
    # survivor sets are padded to bucket sizes, and a linear layer's rounding on CPU depends on the batch (~1e-6):
    # a spike at the threshold may flip, so allow one image of 40 (on this machine they are equal)
    for key, mask in plain["worst_case_masks"].items():
        assert int((graphed["worst_case_masks"][key] != mask).sum()) <= 1
    for a, b in zip(plain["results"], graphed["results"]):
        assert a["attack"] == b["attack"] and abs(a["robust_accuracy"] - b["robust_accuracy"]) <= 1 / 40 + 1e-9
    assert plain["worst_case"][0]["robust_accuracy"] < plain["clean_accuracy"]
    with pytest.raises(Exception, match="unknown graph backend"):
        evaluate(tiny_model, x, y, graphs="tpu", **kw)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cli_refuses_cuda_graphs_without_cuda(tiny_checkpoint, data_dir, device, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from robust_snn.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" then means the CPU, on any machine
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    r = CliRunner().invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--cuda-graphs", "--device", device,
                                  "--limit", "8", "--data-dir", str(data_dir), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1
    assert "--cuda-graphs needs a CUDA device, but the attack runs on cpu" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_first_call_in_inference_mode_then_without(small):
    torch.manual_seed(7)
    x = torch.rand(6, 1, 28, 28)  # a bucket size
    g = GraphedClassifier(small, backend="eager")
    with torch.inference_mode():
        a = g(x)
    with torch.no_grad():
        b = g(x)
    y = torch.randint(0, 10, (6,))
    torch.testing.assert_close(_input_grad(g, x, y), _input_grad(small, x, y), rtol=1e-5, atol=1e-7)
    assert torch.equal(a, b) and torch.equal(b, small(x).detach())


def test_torchattacks_keeps_the_model_in_eval_mode_and_uses_the_replay(small):
    import torchattacks

    torch.manual_seed(8)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    g = GraphedClassifier(small, backend="eager")
    assert not g.training
    atk = torchattacks.PGD(g, eps=0.1, alpha=0.025, steps=3)
    torch.manual_seed(0)
    adv_g = atk(x, y)
    assert not small.training and g.stats["eager"] == 0 and g.stats["replays"] >= 3
    torch.manual_seed(0)
    adv = torchattacks.PGD(small, eps=0.1, alpha=0.025, steps=3)(x, y)
    torch.testing.assert_close(adv_g, adv, rtol=0, atol=1e-6)


def test_a_failed_capture_falls_back_to_the_model_with_a_warning(small, monkeypatch):
    from robust_snn import graphs

    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setitem(graphs.CAPTURES, "eager", broken)
    g = GraphedClassifier(small, backend="eager")
    x = torch.rand(3, 1, 28, 28)
    with pytest.warns(RuntimeWarning, match="could not capture"), torch.no_grad():
        assert torch.equal(g(x), small(x))
    with torch.no_grad():
        g(x)  # not tried again
    assert g.stats["failed"] == 1 and g.stats["eager"] == 2 and g.stats["replays"] == 0


def test_the_replayed_gradient_is_not_differentiable_twice(small):
    g = GraphedClassifier(small, backend="eager")
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    (gx,) = torch.autograd.grad(F.cross_entropy(g(x), torch.tensor([0, 1, 2, 3])), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):  # refused, not a silently constant gradient
        gx.pow(2).sum().backward()
