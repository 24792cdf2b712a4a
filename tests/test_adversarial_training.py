"""Adversarial training recipes: APGD crafting, gradient families, MART, validation by the suite's first stages, best epoch."""
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robust_snn.attacks.suite import STANDARD_STAGES, get_suite
from robust_snn.cli import main
from robust_snn.defenses.adversarial import craft, mart_loss, parse_gradients
from robust_snn.errors import RobustSNNError
from robust_snn.training import TrainSettings, state_path, train

TINY = {"arch": "csnn", "channels": [4, 8], "hidden": [16], "num_steps": 3}


def _settings(**kw):
    return TrainSettings(**{"epochs": 2, "batch_size": 50, "lr": 5e-3, "limit": 300, "val_split": 0.2, "test_limit": 50,
                            "adv": "pgd", "adv_eps": 0.1, "adv_steps": 2, "val_attack_samples": 20, "val_attack_steps": 3,
                            **kw})


@pytest.mark.parametrize("method", ["pgd", "trades", "mart"])
@pytest.mark.parametrize("gradient", [None, "fast_sigmoid:slope=5", "rate"])
def test_apgd_crafting_stays_in_budget_and_raises_the_loss(tiny_model, eval_batch, method, gradient):
    x, y = eval_batch
    x, y = x[:64], y[:64]
    tiny_model.train()
    own = [(m.spike_grad, m.grad_mode) for m in tiny_model.lif_layers]
    x_adv = craft(tiny_model, x, y, method=method, eps=0.15, steps=5, attack="apgd", gradient=gradient)
    assert (x_adv - x).abs().max() <= 0.15 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert tiny_model.training, "crafting restores the model's mode"
    assert all(p.grad is None for p in tiny_model.parameters())
    assert [(m.spike_grad, m.grad_mode) for m in tiny_model.lif_layers] == own, "the model's own surrogate is back"
    tiny_model.eval()
    with torch.no_grad():
        clean, adv = tiny_model(x), tiny_model(x_adv)
    if method == "trades":  # its objective: the distance to the clean output
        kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
        assert kl > 0.01
    else:
        assert F.cross_entropy(adv, y) > F.cross_entropy(clean, y) + 0.1
        assert (adv.argmax(1) == y).float().mean() < (clean.argmax(1) == y).float().mean()


def test_parse_gradients():
    assert parse_gradients(None) == [None]
    assert parse_gradients("model, fast_sigmoid:slope=5, atan:alpha=2, rate, model") == [
        None, "fast_sigmoid:slope=5", "atan:alpha=2", "rate"]
    assert parse_gradients("pdsg:shift=0.5,fast_sigmoid") == ["pdsg:shift=0.5", "fast_sigmoid:slope=25"]
    # the training surrogate spelled out is the model's own gradient: one entry, not two draws in three
    assert parse_gradients("model,fast_sigmoid,atan", own="fast_sigmoid:slope=25") == [None, "atan:alpha=2"]
    assert parse_gradients("fast_sigmoid:slope=25", own="fast_sigmoid") == [None]
    assert parse_gradients("model,fast_sigmoid:slope=5", own="fast_sigmoid:slope=25") == [None, "fast_sigmoid:slope=5"]
    for bad, msg in [("fast_sigmoid:slope=nan", "slope"), ("fast_sigmoid:slope=-1", "slope"), ("nope", "unknown surrogate"),
                     (",", "names no gradient")]:
        with pytest.raises(RobustSNNError, match=msg):
            parse_gradients(bad)


def test_mart_loss_matches_its_definition():
    torch.manual_seed(0)
    lc, la, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    p_adv, p_clean = F.softmax(la, 1), F.softmax(lc, 1)
    terms = []
    for i in range(6):
        wrong = max((c for c in range(10) if c != y[i]), key=lambda c: p_adv[i, c])
        bce = -math.log(p_adv[i, y[i]]) - math.log(1.0001 - p_adv[i, wrong] + 1e-12)
        kl = float((p_clean[i] * (p_clean[i].log() - (p_adv[i] + 1e-12).log())).sum())
        terms.append((bce, kl * (1.0000001 - float(p_clean[i, y[i]]))))
    want = sum(b for b, _ in terms) / 6 + 3.0 * sum(k for _, k in terms) / 6
    assert mart_loss(lc, la, y, beta=3.0).item() == pytest.approx(want, rel=1e-4)
    # identical outputs: no robustness term, only the boosted CE
    assert mart_loss(la, la, y, beta=100.0).item() == pytest.approx(mart_loss(la, la, y, beta=0.0).item(), rel=1e-5)


def test_gradient_family_is_drawn_per_batch_and_reproducible(tmp_path, data_dir, monkeypatch):
    import robust_snn.training as training

    seen = []
    real = training.craft

    def spy(*args, **kw):
        seen.append(kw["gradient"])
        return real(*args, **kw)

    monkeypatch.setattr(training, "craft", spy)
    fam = "model,fast_sigmoid:slope=5,rate"
    s = _settings(adv_gradients=fam, val_split=0.0, epochs=1, limit=500, batch_size=25)
    train(TINY, s, out=tmp_path / "a.pt", data_dir=str(data_dir), device="cpu", progress=False)
    first, seen[:] = list(seen), []
    train(TINY, s, out=tmp_path / "b.pt", data_dir=str(data_dir), device="cpu", progress=False)
    assert len(first) == 20 and first == seen, "one draw per batch, the same draws for the same seed"
    assert set(first) == {None, "fast_sigmoid:slope=5", "rate"}, first


def test_validation_suite_is_the_standard_suites_head():
    v = get_suite("validation")
    assert v.cascade and not v.claim and v.warning
    assert v.stages == STANDARD_STAGES[:3] == get_suite("standard").stages[:3]
    assert all(st.attack == "apgd" for st in v.stages)


def test_adversarial_training_validates_with_the_suite_and_keeps_the_best_epoch(tmp_path, data_dir, monkeypatch):
    import robust_snn.training as training

    # real validation: the suite's worst case, in [0, clean accuracy]
    s = _settings(epochs=1, limit=2000, lr=1e-2, adv_warmup=1, val_attack_samples=1000)  # every validation image attacked
    cfg = {"arch": "csnn", "channels": [4, 8], "hidden": [32], "num_steps": 4}
    model, metrics = train(cfg, s, out=tmp_path / "real.pt", data_dir=str(data_dir), device="cpu", progress=False)
    row = metrics["history"][0]
    assert row["val_accuracy"] > 0.15, "past chance (0.29-0.36 measured)"
    assert 0 <= row["val_robust_accuracy"] < row["val_accuracy"] and metrics["selected_epoch"] == 1
    # the logged number is the validation suite's worst case on the held-out images, as `evaluate` gives it
    from robust_snn.attacks import evaluate
    from robust_snn.data import load_split, split_validation

    _, (xv, yv) = split_validation(*load_split("mnist", "train", data_dir=data_dir, limit=2000), 0.2, seed=0)
    want = evaluate(model, xv, yv, suite="validation", eps=[0.1], steps=3, checks=False, seed=0)
    assert row["val_robust_accuracy"] == want["worst_case"][0]["robust_accuracy"] and len(xv) == 400

    # scripted validation scores: epoch 2 is the best; its weights are the ones kept
    scores = iter([0.3, 0.6, 0.5])
    snaps = {}

    def fake_val(model, val, s, dev):
        snaps[len(snaps) + 1] = {k: v.clone() for k, v in model.state_dict().items()}
        return next(scores)

    monkeypatch.setattr(training, "_val_robust_accuracy", fake_val)
    model, metrics = train(TINY, _settings(epochs=3), out=tmp_path / "best.pt", data_dir=str(data_dir), device="cpu",
                           progress=False)
    assert metrics["selected_epoch"] == 2 and metrics["val_robust_accuracy"] == 0.6
    for k, v in model.state_dict().items():
        assert torch.equal(v, snaps[2][k]), k
    assert any(not torch.equal(snaps[2][k], snaps[3][k]) for k in snaps[3])
    from robust_snn import load_model

    for k, v in load_model(tmp_path / "best.pt").state_dict().items():
        assert torch.equal(v, snaps[2][k]), k

    scores, snaps = iter([0.3, 0.6, 0.5]), {}
    model, metrics = train(TINY, _settings(epochs=3, keep="last"), out=tmp_path / "last.pt", data_dir=str(data_dir),
                           device="cpu", progress=False)
    assert metrics["selected_epoch"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, snaps[3][k]), k


def test_best_epoch_survives_an_interruption(tmp_path, data_dir, monkeypatch, interrupt_training):
    import robust_snn.training as training

    calls = []

    def fake_val(model, val, s, dev):  # the n-th validation of a run scores {1: 0.9, 2: 0.1}[n]: epoch 1 is the best
        calls.append(1)
        return {1: 0.9, 2: 0.1}[len(calls)]

    monkeypatch.setattr(training, "_val_robust_accuracy", fake_val)
    ref, _ = train(TINY, _settings(), out=tmp_path / "ref.pt", data_dir=str(data_dir), device="cpu", progress=False)
    calls.clear()
    interrupt_training(2)
    out = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(TINY, _settings(), out=out, data_dir=str(data_dir), device="cpu", progress=False)
    assert state_path(out).is_file()
    interrupt_training(None)
    resumed, metrics = train(TINY, _settings(), out=out, data_dir=str(data_dir), device="cpu", resume=True, progress=False)
    assert metrics["selected_epoch"] == 1
    for (k, v1), v2 in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_a_damaged_best_epoch_record_is_refused_on_resume(tmp_path, data_dir, interrupt_training):
    out = tmp_path / "run.pt"
    interrupt_training(2)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, _settings(), out=out, data_dir=str(data_dir), device="cpu", progress=False)
    interrupt_training(None)
    state = torch.load(state_path(out), weights_only=True)
    assert state["best"]["epoch"] == 1
    first = next(iter(state["best"]["model"]))
    state["best"]["model"][first] = torch.zeros(7)  # weights of another shape
    torch.save(state, state_path(out))
    with pytest.raises(RobustSNNError, match="damaged"):
        train(TINY, _settings(), out=out, data_dir=str(data_dir), device="cpu", resume=True, progress=False)


@pytest.mark.parametrize("args,msg", [
    (["--adv", "pgd", "--adv-attack", "cw"], "unknown --adv-attack"),
    (["--adv", "pgd", "--adv-attack", "apgd", "--adv-alpha", "0.01"], "adapts its own step"),
    (["--adv", "fgsm-rs", "--adv-attack", "apgd"], "single step"),
    (["--adv", "pgd", "--adv-gradients", "fast_sigmoid:slope=nan"], "--adv-gradients"),
    (["--adv-gradients", "atan"], "applies to adversarial training"),
    (["--adv", "mart", "--loss", "mse"], "needs --loss ce"),
    (["--adv", "pgd", "--keep", "first"], "unknown --keep"),
    (["--adv", "pgd", "--val-attack-steps", "0"], "val-attack-steps"),
])
def test_cli_refuses_bad_adversarial_settings_in_one_line(tmp_path, data_dir, args, msg):
    res = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "m.pt"), "--data-dir", str(data_dir), "--limit", "100",
                                    "--quiet", *args])
    assert res.exit_code != 0 and msg in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_cli_trains_mart_with_apgd_through_a_gradient_family(tmp_path, data_dir):
    out = tmp_path / "mart.pt"
    res = CliRunner().invoke(main, ["train", "--model", "csnn", "--channels", "4,8", "--hidden", "16", "--num-steps", "3",
                                    "--epochs", "1", "--limit", "200", "--test-limit", "50", "--val-split", "0.25",
                                    "--adv", "mart", "--adv-attack", "apgd", "--adv-steps", "3", "--adv-eps", "0.1",
                                    "--adv-gradients", "model,fast_sigmoid:slope=5", "--val-attack-samples", "20",
                                    "--val-attack-steps", "2", "--out", str(out), "--data-dir", str(data_dir), "--quiet"])
    assert res.exit_code == 0, res.output
    from robust_snn.checkpoint import read_checkpoint

    payload = read_checkpoint(out)
    assert payload["recipe"]["adv"] == "mart" and payload["recipe"]["adv_attack"] == "apgd"
    assert payload["recipe"]["adv_gradients"] == "model,fast_sigmoid:slope=5"
    assert payload["metrics"]["selected_epoch"] == 1 and payload["metrics"]["val_robust_accuracy"] is not None


def test_recipe_script_skips_finished_runs_and_refuses_unknown_recipes(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "train_at_recipes.sh"
    (tmp_path / "csnn-mnist-at-trades.pt").write_bytes(b"finished")  # a finished run: checkpoint, no .state.pt
    res = subprocess.run(["bash", str(script), str(tmp_path), "trades"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "finished" in res.stdout, res.stderr
    res = subprocess.run(["bash", str(script), str(tmp_path), "free-at"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown recipe free-at" in res.stderr
    # every recipe the model card's table names is one the script knows (finished runs are skipped, not trained)
    names = ["pgd-at", "trades", "trades-apgd-family", "pgd-apgd-family", "trades-apgd-family-wide", "pgd-apgd-family-long",
             "pgd-apgd-family-membrane", "pgd-apgd-family-wide", "pgd-apgd-family-wide-membrane"]
    for name in names:
        (tmp_path / f"csnn-mnist-at-{name}.pt").write_bytes(b"finished")
    res = subprocess.run(["bash", str(script), str(tmp_path), *names], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.count(": finished") == len(names), res.stderr
