import pytest
import torch

from robust_snn import load_model
from robust_snn.checkpoint import read_checkpoint
from robust_snn.errors import RobustSNNError
from robust_snn.training import TrainSettings, state_path, train

TINY = {"arch": "csnn", "channels": [4, 8], "hidden": [16], "num_steps": 3}


def test_training_on_real_mnist_beats_chance(tiny_checkpoint, mnist_test):
    payload = read_checkpoint(tiny_checkpoint)
    assert payload["metrics"]["test_accuracy"] > 0.5  # chance is 0.1
    model = load_model(tiny_checkpoint)
    x, y = mnist_test
    acc = (model(x[:300]).argmax(1) == y[:300]).float().mean().item()
    assert acc > 0.5
    for suffix in (".log.json", ".log.csv", ".curves.png"):
        f = tiny_checkpoint.with_name("tiny" + suffix)
        assert f.is_file() and f.stat().st_size > 0
    assert not state_path(tiny_checkpoint).exists()
    assert payload["recipe"]["epochs_run"] == 3 and payload["recipe"]["train_seconds"] > 0


def _settings(**kw):
    return TrainSettings(**{"epochs": 2, "batch_size": 50, "lr": 5e-3, "limit": 200, "val_split": 0.1, "test_limit": 50, **kw})


def test_same_seed_same_weights(tmp_path, data_dir):
    m1, _ = train(dict(TINY, dropout=0.1), _settings(), out=tmp_path / "a.pt", data_dir=str(data_dir), device="cpu", progress=False)
    m2, _ = train(dict(TINY, dropout=0.1), _settings(), out=tmp_path / "b.pt", data_dir=str(data_dir), device="cpu", progress=False)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k


@pytest.mark.parametrize("encoding", ["direct", "rate"])  # rate: the encoder's own random stream restarts per epoch
def test_resume_after_interruption_gives_identical_weights(tmp_path, data_dir, interrupt_training, encoding):
    cfg = dict(TINY, encoding=encoding)
    ref, _ = train(cfg, _settings(), out=tmp_path / "ref.pt", data_dir=str(data_dir), device="cpu", progress=False)
    interrupt_training(2)
    out = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, _settings(), out=out, data_dir=str(data_dir), device="cpu", progress=False, command="robust-snn train A")
    assert state_path(out).is_file() and not out.exists()
    interrupt_training(None)
    resumed, metrics = train(cfg, _settings(), out=out, data_dir=str(data_dir), device="cpu", resume=True, progress=False,
                             command="robust-snn train A --resume")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert [h["device"] for h in metrics["history"]] == ["cpu", "cpu"]
    # the recipe keeps every invocation that trained some epochs, not only the last
    recipe = read_checkpoint(out)["recipe"]
    assert recipe["command"] == "robust-snn train A --resume"
    assert [(r["command"], r["first_epoch"], r["device"]) for r in recipe["invocations"]] == [
        ("robust-snn train A", 1, "cpu"), ("robust-snn train A --resume", 2, "cpu")]
    for (k, v1), v2 in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v1, v2), k
    with pytest.raises(RobustSNNError, match="other settings"):
        state = tmp_path / "x.pt"
        torch.save({"config": {}, "settings": {}}, state_path(state))
        train(cfg, _settings(), out=state, data_dir=str(data_dir), device="cpu", resume=True, progress=False)


def test_resume_of_a_state_without_invocations_says_the_first_are_unknown(tmp_path, data_dir, interrupt_training):
    """A state written before invocations were recorded: the recipe says its epochs came from an unknown command."""
    out = tmp_path / "run.pt"
    interrupt_training(2)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, _settings(limit=100), out=out, data_dir=str(data_dir), device="cpu", progress=False, command="old")
    interrupt_training(None)
    state = torch.load(state_path(out), weights_only=True)
    del state["invocations"]
    torch.save(state, state_path(out))
    train(TINY, _settings(limit=100), out=out, data_dir=str(data_dir), device="cpu", resume=True, progress=False, command="new")
    assert [(r["command"], r["first_epoch"], r["device"], r["world_size"]) for r in
            read_checkpoint(out)["recipe"]["invocations"]] == [(None, 1, None, 1), ("new", 2, "cpu", 1)]


def test_a_rerun_that_only_finishes_records_no_invocation(tmp_path, data_dir, monkeypatch):
    """Killed while testing after the last epoch: the rerun trains nothing, so the recipe names only the first command."""
    import robust_snn.training as training

    out = tmp_path / "run.pt"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "evaluate_clean", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, _settings(limit=100), out=out, data_dir=str(data_dir), device="cpu", progress=False, command="first")
    monkeypatch.undo()
    assert state_path(out).is_file() and not out.exists()
    _, metrics = train(TINY, _settings(limit=100), out=out, data_dir=str(data_dir), device="cpu", resume=True,
                       progress=False, command="again")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert [(r["command"], r["first_epoch"]) for r in read_checkpoint(out)["recipe"]["invocations"]] == [("first", 1)]


def test_mse_loss_and_sgd_train(tmp_path, data_dir):
    _, metrics = train(TINY, _settings(loss="mse", optimizer="sgd", lr=0.05, scheduler="step", epochs=1), out=tmp_path / "m.pt",
                       data_dir=str(data_dir), device="cpu", progress=False)
    assert metrics["history"][0]["train_loss"] > 0 and 0 <= metrics["test_accuracy"] <= 1


def test_bad_settings(tmp_path, data_dir):
    with pytest.raises(RobustSNNError, match="unknown optimizer"):
        train(TINY, _settings(optimizer="lbfgs"), out=tmp_path / "m.pt", data_dir=str(data_dir), progress=False)
    with pytest.raises(RobustSNNError, match=r"must end in \.pt"):
        train(TINY, _settings(), out=tmp_path / "m.ckpt", data_dir=str(data_dir), progress=False)
    # the spike-count MSE target (80 % / 20 % of T) means nothing for membrane potentials
    with pytest.raises(RobustSNNError, match="with --readout membrane use --loss ce"):
        train({**TINY, "readout": "membrane"}, _settings(loss="mse"), out=tmp_path / "m.pt", data_dir=str(data_dir),
              progress=False)
    assert not (tmp_path / "m.pt").exists()


def test_random_shift_moves_content_within_bounds():
    from robust_snn.training import random_shift

    x = torch.zeros(50, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    out = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.all(out.sum((1, 2, 3)) == 1)  # nothing lost or duplicated
    pos = torch.nonzero(out[:, 0])[:, 1:]
    assert (pos - 4).abs().max() == 2 and len({tuple(p) for p in pos.tolist()}) > 5
    assert torch.equal(random_shift(x, 0, generator=torch.Generator()), x)


def test_logs_of_a_run_resumed_across_versions_keep_every_column(tmp_path):
    """A state written by an older version logged ``val_pgd_accuracy``; rows after the resume log ``val_robust_accuracy``."""
    import csv

    from robust_snn.training import _write_logs, log_paths

    old = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.9, "val_pgd_accuracy": 0.7}
    new = {"epoch": 2, "train_loss": 0.4, "train_accuracy": 0.92, "val_loss": 0.3, "val_accuracy": 0.93,
           "val_robust_accuracy": 0.6}
    _write_logs(tmp_path / "m.pt", [old, new])
    rows = list(csv.DictReader(log_paths(tmp_path / "m.pt")[1].open()))
    assert [r["val_pgd_accuracy"] for r in rows] == ["0.7", ""] and [r["val_robust_accuracy"] for r in rows] == ["", "0.6"]
    assert log_paths(tmp_path / "m.pt")[2].stat().st_size > 0  # the curves figure draws both
