import json

import pytest
from click.testing import CliRunner

from robust_snn.cli import main


@pytest.fixture()
def runner():
    return CliRunner()


def test_train_then_eval_json(runner, tmp_path, data_dir):
    out = tmp_path / "m.pt"
    res = runner.invoke(main, ["train", "--model", "fcsnn", "--hidden", "32", "--epochs", "1", "--limit", "300", "--test-limit", "100",
                               "--num-steps", "3", "--out", str(out), "--data-dir", str(data_dir), "--quiet", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output and out.is_file()
    res = runner.invoke(main, ["eval", "--checkpoint", str(out), "--limit", "50", "--json", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"checkpoint", "dataset", "split", "n", "accuracy"} <= set(data)
    assert data["n"] == 50 and 0.0 <= data["accuracy"] <= 1.0 and data["split"] == "test"
    assert (tmp_path / "ev" / "confusion.png").stat().st_size > 0


def test_eval_text(runner, tiny_checkpoint):
    res = runner.invoke(main, ["eval", "--checkpoint", str(tiny_checkpoint), "--limit", "100"])
    assert res.exit_code == 0, res.output
    assert "accuracy:" in res.output and "per-class accuracy" in res.output and "mean firing rate" in res.output


def test_info_lists_everything(runner):
    res = runner.invoke(main, ["info", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["models"] == ["csnn", "csnn-deep", "fcsnn", "scnn", "sresnet"]
    assert {"fgsm", "pgd", "square", "autoattack"} <= set(data["attacks"])
    assert data["attacks"]["pgd"]["defaults"]["step_scale"] == 2.5
    assert "rate" in data["attack_gradients"] and data["encoders"]["rate"]["stochastic"]
    assert set(data["neurons"]) == {"lif", "alif", "synaptic"} and all(data["neurons"].values())
    assert data["threat_models"]["L0"]["units"] == "events added or removed (flipped entries)"
    assert list(data["threat_models"]) == ["Linf", "L2", "L0", "add-only"]


def test_info_text_lists_neurons_and_threat_models(runner):
    res = runner.invoke(main, ["info"])
    assert res.exit_code == 0, res.output
    lines = {line.split(":", 1)[0].strip(): line for line in res.output.splitlines() if ":" in line}
    assert all(f"{n}: " in lines["neurons"] for n in ("lif", "alif", "synaptic"))
    assert all(f"{t}: " in lines["threats"] for t in ("Linf", "L2", "L0"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--checkpoint", "/nonexistent/x.pt"], "checkpoint not found"),
        (["attack", "--checkpoint", "CKPT", "--eps", "2"], "eps must be in [0, 1]"),
        (["attack", "--checkpoint", "CKPT", "--attack", "nope"], "unknown attack"),
        (["attack", "--checkpoint", "CKPT", "--eps", "abc"], "comma-separated numbers"),
        (["attack", "--checkpoint", "CKPT", "--surrogate", "relu"], "unknown surrogate"),
        (["train", "--out", "OUT", "--model", "vgg"], "unknown model"),
        (["train", "--out", "OUT", "--epochs", "0"], "--epochs must be >= 1"),
        (["train", "--out", "OUT", "--reset", "sometimes"], "unknown reset mechanism"),
        (["train", "--out", "OUT", "--val-split", "0.95"], "no training images left"),
    ],
)
def test_bad_input_one_line_error(runner, tiny_checkpoint, tmp_path, data_dir, args, message):
    args = [str(tiny_checkpoint) if a == "CKPT" else str(tmp_path / "o.pt") if a == "OUT" else a for a in args]
    if args[0] == "train":
        args += ["--data-dir", str(data_dir), "--limit", "10"]
    res = runner.invoke(main, args + (["--limit", "10"] if args[0] == "attack" else []))
    assert res.exit_code == 1, res.output
    assert message in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_attack_table_and_out_files(runner, tiny_checkpoint, tmp_path):
    import torch

    out = tmp_path / "atk"
    res = runner.invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--attack", "fgsm,pgd", "--eps", "0,0.2",
                               "--steps", "5", "--limit", "40", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "worst case over attacks" in res.output and "sanity checks" in res.output and "[FAIL]" not in res.output
    saved = torch.load(out / "adversarial.pt", weights_only=True)
    assert set(saved["adversarial"]) == {"fgsm@0", "fgsm@0.2", "pgd@0", "pgd@0.2"}
    adv = saved["adversarial"]["pgd@0.2"]["images"]
    assert adv.shape == (40, 1, 28, 28) and len(saved["indices"]) == 40
    results = json.loads((out / "results.json").read_text())
    assert len(results["results"]) == 4 and (out / "examples.png").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_leaves_nothing_on_interrupt(tmp_path):
    from robust_snn.utils import atomic_path

    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_python_module_entry_point(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "robust_snn", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "attack" in res.stdout and "train" in res.stdout


def test_cli_turns_tf32_off(runner, monkeypatch):
    """GPU results must equal the CPU's: every command runs with TF32 convolutions and matmuls off."""
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    r = runner.invoke(main, ["info", "--json"])
    assert r.exit_code == 0, r.output
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
