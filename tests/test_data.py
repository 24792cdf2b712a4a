import gzip

import pytest
import torch

from robust_snn.data import bundled_test_split, load_split, read_idx, split_validation
from robust_snn.errors import RobustSNNError


def test_bundled_test_split_equals_real_files(mnist_test):
    x, y = bundled_test_split()
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert torch.equal(x, mnist_test[0]) and torch.equal(y, mnist_test[1])
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_test_split_falls_back_to_bundled_copy_offline(tmp_path):
    x, y = load_split("mnist", "test", data_dir=tmp_path, download=False, limit=100)
    assert x.shape == (100, 1, 28, 28) and y[:3].tolist() == [7, 2, 1]


def test_missing_training_data_gives_one_clear_error(tmp_path):
    with pytest.raises(RobustSNNError, match="pass --data-dir .*ROBUST_SNN_DATA"):
        load_split("mnist", "train", data_dir=tmp_path, download=False)


def test_reads_training_split(data_dir):
    x, y = load_split("mnist", "train", data_dir=data_dir, limit=10)
    assert x.shape == (10, 1, 28, 28) and y.tolist()[:4] == [5, 0, 4, 1]


def test_read_idx_rejects_garbage_and_truncation(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"hello world")
    with pytest.raises(RobustSNNError, match="not an unsigned-byte IDX"):
        read_idx(bad)
    trunc = tmp_path / "t.gz"
    with gzip.open(trunc, "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(RobustSNNError, match="truncated"):
        read_idx(trunc)


def test_validation_split_is_deterministic_and_disjoint():
    x = torch.arange(100).float().view(100, 1, 1, 1)
    y = torch.arange(100)
    (xa, ya), (xv, yv) = split_validation(x, y, 0.1, seed=3)
    (xa2, _), _ = split_validation(x, y, 0.1, seed=3)
    assert len(xv) == 10 and len(xa) == 90 and torch.equal(xa, xa2)
    assert set(ya.tolist()).isdisjoint(yv.tolist())


def test_unknown_dataset_and_bad_limit():
    with pytest.raises(RobustSNNError, match="unknown dataset"):
        load_split("imagenet")
    with pytest.raises(RobustSNNError, match="positive"):
        load_split("mnist", "test", limit=0)


# -- synthetic N-MNIST: the offline default test split of event models --------------------------------------------------------


@pytest.fixture()
def offline_events(tmp_path, monkeypatch):
    """No N-MNIST files anywhere, a private cache, and no network (any connection attempt fails the test)."""
    import socket

    monkeypatch.setenv("ROBUST_SNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ROBUST_SNN_DATA", str(tmp_path / "no-data"))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path


def test_event_test_split_defaults_to_synthetic_nmnist_deterministically(offline_events):
    from robust_snn.data import cache_dir, data_source, synthetic_note

    x, y = load_split("nmnist", "test", num_steps=4, limit=12)
    assert x.shape == (12, 4, 2, 34, 34) and set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(y, bundled_test_split()[1][:12])  # sample i is MNIST test image i, with its label
    cached = list((cache_dir() / "nmnist-synthetic").glob("test-T4-seed0-*.npz"))
    assert len(cached) == 1 and cache_dir() == offline_events / "cache"
    again = load_split("nmnist", "test", num_steps=4, limit=12)  # from the cache
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    cached[0].unlink()  # simulated again from scratch: the same frames
    fresh = load_split("nmnist", "test", num_steps=4, limit=5)
    assert torch.equal(fresh[0], x[:5])
    longer = load_split("nmnist", "test", num_steps=4, limit=20)  # extends the cache, keeps its prefix
    assert torch.equal(longer[0][:12], x) and torch.equal(longer[1], bundled_test_split()[1][:20])
    assert data_source("nmnist", "test") == synthetic_note("test") == \
        "synthetic N-MNIST (generated from the MNIST test split; not the real recordings)"
    cached = list((cache_dir() / "nmnist-synthetic").glob("*.npz"))
    cached[0].write_bytes(b"damaged")  # a damaged cache is simulated again, not an error
    assert torch.equal(load_split("nmnist", "test", num_steps=4, limit=12)[0], x)


def test_synthetic_default_equals_make_nmnist_files_read_by_tonic(offline_events):
    import tonic

    from robust_snn.data import data_source, has_event_files
    from robust_snn.events import make_nmnist, to_frames
    from robust_snn.events.synthetic import EVENT_DTYPE

    x, y = load_split("nmnist", "test", num_steps=6, limit=6)
    root = offline_events / "files"
    make_nmnist(root, split="test", limit=6, seed=0)
    for i in range(6):
        f = root / "NMNIST" / "Test" / str(int(y[i])) / f"{i:05d}.bin"
        frames = to_frames(tonic.io.read_mnist_file(str(f), dtype=EVENT_DTYPE), 6)
        assert torch.equal(x[i], torch.from_numpy(frames).float())
    # real (tonic-layout) files under --data-dir win over the synthetic default
    assert has_event_files(root, "test") and not has_event_files(root, "train")
    assert data_source("nmnist", "test", data_dir=root).startswith("N-MNIST test files under")
    xr, yr = load_split("nmnist", "test", data_dir=root, num_steps=6)
    assert sorted(yr.tolist()) == sorted(y.tolist()) and len(xr) == 6
    with pytest.raises(RobustSNNError, match="no N-MNIST train files"):  # training never falls back to synthetic data
        load_split("nmnist", "train", data_dir=root, num_steps=6)


def test_eval_and_attack_of_an_event_checkpoint_without_data_dir_use_synthetic_nmnist(offline_events):
    import json

    from click.testing import CliRunner

    from robust_snn.checkpoint import save_checkpoint
    from robust_snn.cli import main
    from robust_snn.data import synthetic_note
    from robust_snn.models import build_model

    torch.manual_seed(0)
    model = build_model("fcsnn", dataset="nmnist", input="events", in_channels=2, image_size=[34, 34], hidden=[16], num_steps=4,
                        mean=[0.0], std=[1.0], threshold=0.3)
    ckpt = save_checkpoint(offline_events / "ev.pt", model)
    ev = CliRunner().invoke(main, ["eval", "--checkpoint", str(ckpt), "--limit", "10", "--json"])
    assert ev.exit_code == 0, ev.output
    res = json.loads(ev.output[ev.output.index("{"):])
    assert res["data"] == synthetic_note("test") and res["n"] == 10 and res["num_steps"] == 4
    text = CliRunner().invoke(main, ["eval", "--checkpoint", str(ckpt), "--limit", "10"])
    assert text.exit_code == 0 and "not the real recordings" in text.output
    att = CliRunner().invoke(main, ["attack", "--checkpoint", str(ckpt), "--limit", "6", "--budget", "5", "--json"])
    assert att.exit_code == 0, att.output
    assert json.loads(att.output[att.output.index("{"):])["data"] == synthetic_note("test")


def test_event_test_split_never_silently_replaces_named_real_data(tmp_path, monkeypatch):
    from robust_snn.data import load_split

    monkeypatch.setenv("ROBUST_SNN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RobustSNNError, match="does not exist"):  # a typo in --data-dir is not a request for synthetic data
        load_split("nmnist", "test", data_dir=tmp_path / "typo", num_steps=4, limit=2)
    (tmp_path / "real" / "NMNIST" / "Train" / "0").mkdir(parents=True)  # real N-MNIST without its Test split
    with pytest.raises(RobustSNNError, match="has no Test files"):
        load_split("nmnist", "test", data_dir=tmp_path / "real", num_steps=4, limit=2)
    (tmp_path / "real" / "NMNIST" / "SYNTHETIC").write_text("written by make-nmnist")  # a synthetic training split
    assert load_split("nmnist", "test", data_dir=tmp_path / "real", num_steps=4, limit=2)[0].shape == (2, 4, 2, 34, 34)
    (tmp_path / "other").mkdir()
    x, y = load_split("nmnist", "test", data_dir=tmp_path / "other", num_steps=4, limit=2)  # no NMNIST/: synthetic
    assert x.shape == (2, 4, 2, 34, 34)
