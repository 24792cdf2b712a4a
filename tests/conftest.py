"""Shared fixtures: the real MNIST files (required, never downloaded) and a tiny trained model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ROBUST_SNN_DATA", REPO.parent / "shared" / "datasets")).resolve()


def pytest_configure(config):
    # OMP_NUM_THREADS wins (the suite must pass with 1 thread and with 2: other reduction orders)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    raw = DATA_DIR / "MNIST" / "raw"
    missing = [f for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
               if not (raw / f).is_file() and not (raw / f"{f}.gz").is_file()]
    if missing:
        pytest.fail(f"real MNIST files missing under {raw}: {missing}; set ROBUST_SNN_DATA to a torchvision-layout root, e.g. after "
                    "python -c \"import torchvision as tv; [tv.datasets.MNIST('DIR', train=t, download=True) for t in (True, False)]\"",
                    pytrace=False)
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist_test(data_dir):
    from robust_snn.data import load_split

    return load_split("mnist", "test", data_dir=data_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, data_dir) -> Path:
    """A tiny CSNN trained for a few seconds on 2,000 real MNIST images."""
    from robust_snn.training import TrainSettings, train

    out = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    settings = TrainSettings(epochs=3, batch_size=50, lr=1e-2, limit=2000, val_split=0.0, test_limit=500, seed=0)
    train({"arch": "csnn", "channels": [4, 8], "hidden": [32], "num_steps": 4}, settings, out=out, data_dir=str(data_dir),
          device="cpu", progress=False)
    return out


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    from robust_snn import load_model

    return load_model(tiny_checkpoint)


@pytest.fixture(scope="session")
def eval_batch(mnist_test):
    x, y = mnist_test
    return x[:64].clone(), y[:64].clone()


@pytest.fixture(scope="session")
def synthetic_nmnist(tmp_path_factory, data_dir):
    """Synthetic N-MNIST files in tonic's layout: 800 train and 200 test samples."""
    from robust_snn.events import make_nmnist

    root = tmp_path_factory.mktemp("nmnist")
    make_nmnist(root, split="train", limit=800, seed=0, data_dir=str(data_dir))
    make_nmnist(root, split="test", limit=200, seed=1, data_dir=str(data_dir))
    return root


@pytest.fixture(scope="session")
def scnn_checkpoint(synthetic_nmnist, tmp_path_factory):
    """A tiny SpikingCNN trained on ``synthetic_nmnist`` (about 60 % on its test split)."""
    from click.testing import CliRunner

    from robust_snn.cli import main

    out = tmp_path_factory.mktemp("scnn") / "scnn.pt"
    res = CliRunner().invoke(main, ["train", "--model", "scnn", "--dataset", "nmnist", "--data-dir", str(synthetic_nmnist),
                                    "--channels", "4,8,8", "--hidden", "32", "--num-steps", "6", "--epochs", "8", "--lr", "5e-3",
                                    "--batch-size", "50", "--val-split", "0", "--threshold", "0.5", "--out", str(out), "--quiet",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture()
def interrupt_training(monkeypatch):
    """``interrupt_training(epoch)``: the next ``train`` run stops with ``KeyboardInterrupt`` at the start of ``epoch``
    (epochs are dealt once each); ``interrupt_training(None)`` lets training run normally again."""
    import robust_snn.training as training

    real = training.shard_epoch

    def arm(epoch):
        if epoch is None:
            monkeypatch.setattr(training, "shard_epoch", real)
            return
        calls = {"n": 0}

        def flaky(perm, rank, world):
            calls["n"] += 1
            if calls["n"] == epoch:
                raise KeyboardInterrupt
            return real(perm, rank, world)

        monkeypatch.setattr(training, "shard_epoch", flaky)

    return arm
