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
