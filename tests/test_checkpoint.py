import os

import pytest
import torch

from robust_snn import RobustSNNError, build_model, load_model, save_checkpoint
from robust_snn.checkpoint import read_checkpoint


class Evil:
    """Unpickling this runs os.mkdir(marker): a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("csnn", channels=[4, 8], hidden=[16], num_steps=5, beta=0.7, surrogate="atan", threshold=0.4).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, metrics={"test_accuracy": 0.5}, recipe={"command": "x"})
    loaded = load_model(path)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert loaded.config == model.config and not loaded.training
    payload = read_checkpoint(path)
    assert payload["format_version"] == 1 and payload["metrics"]["test_accuracy"] == 0.5
    assert set(payload["versions"]) >= {"torch", "snntorch", "robust_snn"}
    assert load_model(path, num_steps=9).num_steps == 9


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "robust-snn-checkpoint", "config": {}, "state_dict": {}, "x": Evil(str(marker))}, path)
    with pytest.raises(RobustSNNError, match="not a safe robust-snn checkpoint"):
        load_model(path)
    assert not marker.exists(), "loading must never execute code"


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RobustSNNError, match="corrupt or not a checkpoint"):
        load_model(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(RobustSNNError, match="not a robust-snn checkpoint"):
        load_model(foreign)
    with pytest.raises(RobustSNNError, match="checkpoint not found"):
        load_model(tmp_path / "missing.pt")


def test_config_weights_mismatch(tmp_path):
    model = build_model("csnn", channels=[4, 8], hidden=[16])
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["config"]["hidden"] = [32]
    torch.save(payload, path)
    with pytest.raises(RobustSNNError, match="weights do not match its model config"):
        load_model(path)


def test_truncated_file(tmp_path):
    model = build_model("fcsnn")
    path = save_checkpoint(tmp_path / "m.pt", model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RobustSNNError, match="corrupt"):
        load_model(path)
