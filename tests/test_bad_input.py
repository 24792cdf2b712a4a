"""Bad input never loses work, never prints a traceback and never gives a silently wrong answer.

One test per case of the fresh-machine trial (issue 15), CLI cases through click's CliRunner
(or a real subprocess where a signal is involved). Every CLI refusal is one line naming the
option or the fix, with exit status 1, and leaves what the user made untouched.
"""
import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robust_snn import load_model
from robust_snn.checkpoint import save_checkpoint
from robust_snn.cli import main
from robust_snn.errors import RobustSNNError
from robust_snn.models import MAX_NUM_STEPS, build_model, unchecked_inputs
from robust_snn.training import log_paths, state_path

REPO = Path(__file__).resolve().parent.parent
UNWRITABLE = "/proc/robust-snn-test/out"  # /proc refuses new entries, even for root


class Evil:
    """Unpickling this runs os.mkdir(marker): a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(res, *needles: str) -> str:
    """The run failed with exit 1 and exactly one line that contains every needle."""
    out = res.output.strip()
    assert res.exit_code == 1, res.output
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    for n in needles:
        assert n in out, (n, out)
    return out


@pytest.fixture()
def runner():
    return CliRunner()


def _train_args(out, data_dir, *extra):
    return ["train", "--model", "fcsnn", "--hidden", "16", "--epochs", "1", "--limit", "200", "--test-limit", "50",
            "--num-steps", "2", "--out", str(out), "--data-dir", str(data_dir), "--quiet", "--device", "cpu", *extra]


# -- train: never overwrite, check before work ------------------------------------------------

def test_train_refuses_to_overwrite_a_checkpoint_and_force_overwrites(runner, tmp_path, data_dir, tiny_checkpoint):
    out = tmp_path / "mine.pt"
    out.write_bytes(tiny_checkpoint.read_bytes())
    before = _digest(out)
    res = runner.invoke(main, _train_args(out, data_dir))
    _one_line_error(res, "already exists", "--force")
    assert _digest(out) == before and not any(p.exists() for p in log_paths(out))
    # a log beside a checkpoint that was moved away is the user's too
    lonely = tmp_path / "lonely.pt"
    log_paths(lonely)[0].write_text("[]")
    _one_line_error(runner.invoke(main, _train_args(lonely, data_dir)), "lonely.log.json", "--force")
    res = runner.invoke(main, _train_args(out, data_dir, "--force"))
    assert res.exit_code == 0, res.output
    assert _digest(out) != before and load_model(out).config["arch"] == "fcsnn"


def test_train_resume_of_a_finished_run_is_refused(runner, tmp_path, data_dir, tiny_checkpoint):
    out = tmp_path / "done.pt"
    out.write_bytes(tiny_checkpoint.read_bytes())
    _one_line_error(runner.invoke(main, _train_args(out, data_dir, "--resume")), "nothing to resume", "--force")


def test_train_with_an_interrupted_run_needs_resume_or_force(runner, tmp_path, data_dir):
    out = tmp_path / "run.pt"
    torch.save({"config": {}, "settings": {}}, state_path(out))
    before = _digest(state_path(out))
    _one_line_error(runner.invoke(main, _train_args(out, data_dir)), "interrupted run", "--resume", "--force")
    assert _digest(state_path(out)) == before


def test_train_unwritable_out_fails_before_training(runner, data_dir):
    res = runner.invoke(main, _train_args(UNWRITABLE + ".pt", data_dir))
    _one_line_error(res, "--out", "cannot write there")


@pytest.mark.parametrize("content, message", [
    (b"\x00not a torch file" * 20, "corrupt or not a training state"),
    (b"junk\n", "corrupt or not a training state"),  # the legacy unpickler raises KeyError on this
    (None, "not a safe robust-snn training state"),
    ({"weights": 1}, "not a robust-snn training state"),
])
def test_train_resume_with_a_corrupt_or_malicious_state(runner, tmp_path, data_dir, content, message):
    out = tmp_path / "r.pt"
    sp = state_path(out)
    marker = tmp_path / "pwned"
    if content is None:
        torch.save({"config": {}, "settings": {}, "x": Evil(str(marker))}, sp)
    elif isinstance(content, bytes):
        sp.write_bytes(content)
    else:
        torch.save(content, sp)
    res = runner.invoke(main, _train_args(out, data_dir, "--resume"))
    _one_line_error(res, "--resume", message)
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--test-limit", "0"], "--test-limit must be >= 1"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--val-split", "1"], "--val-split must be in [0, 1)"),
    (["--lr", "inf"], "--lr must be a positive finite number"),
    (["--num-steps", str(MAX_NUM_STEPS + 1)], f"[1, {MAX_NUM_STEPS}]"),
    (["--threshold", "nan"], "threshold must be a positive finite number"),
])
def test_train_settings_are_checked_before_any_epoch(runner, tmp_path, data_dir, extra, message, monkeypatch):
    import robust_snn.training as training

    def no_epochs(*a, **k):
        raise AssertionError("an epoch started before the settings were checked")

    monkeypatch.setattr(training, "shard_epoch", no_epochs)
    res = runner.invoke(main, _train_args(tmp_path / "m.pt", data_dir) + extra)
    _one_line_error(res, message)


# -- outputs of the other commands -------------------------------------------------------------

@pytest.mark.parametrize("cmd", [
    ["eval", "--limit", "20"],
    ["attack", "--attack", "fgsm", "--limit", "20"],
    ["certify", "--limit", "2", "--n", "10", "--n0", "5"],
    ["visualize", "--tsne-samples", "0", "--steps", "2"],
])
def test_unwritable_out_fails_before_the_work(runner, tiny_checkpoint, cmd, monkeypatch):
    import robust_snn.checkpoint as checkpoint

    def no_work(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(checkpoint, "load_model", no_work)
    res = runner.invoke(main, cmd + ["--checkpoint", str(tiny_checkpoint), "--out", UNWRITABLE])
    _one_line_error(res, "--out", "cannot write there")


def test_eval_and_attack_do_not_overwrite_results_without_force(runner, tiny_checkpoint, tmp_path):
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "eval.json").write_text("mine")
    res = runner.invoke(main, ["eval", "--checkpoint", str(tiny_checkpoint), "--limit", "20", "--out", str(ev)])
    _one_line_error(res, "already holds eval.json", "--force")
    assert (ev / "eval.json").read_text() == "mine"
    res = runner.invoke(main, ["eval", "--checkpoint", str(tiny_checkpoint), "--limit", "20", "--out", str(ev), "--force", "--json"])
    assert res.exit_code == 0, res.output and '"accuracy"' in (ev / "eval.json").read_text()
    atk = tmp_path / "atk"
    atk.mkdir()
    (atk / "results.json").write_text("mine")
    res = runner.invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--attack", "fgsm", "--limit", "20", "--out", str(atk)])
    _one_line_error(res, "already holds results.json", "--force")
    assert (atk / "results.json").read_text() == "mine"


def test_visualize_default_folder_is_not_overwritten(runner, tiny_checkpoint, tmp_path):
    figs = tmp_path / "figures"
    figs.mkdir()
    (figs / "1_images.png").write_bytes(b"mine")
    res = runner.invoke(main, ["visualize", "--checkpoint", str(tiny_checkpoint), "--out", str(figs), "--tsne-samples", "0"])
    _one_line_error(res, "already holds 1_images.png", "--force")
    assert (figs / "1_images.png").read_bytes() == b"mine"


# -- plot ---------------------------------------------------------------------------------------

CSV_HEADER = "model,defense,attack,surrogate,eps,num_steps,seed,n,robust_accuracy,ci_low,ci_high\n"


def test_plot_csv_with_a_non_numeric_eps(runner, tmp_path):
    p = tmp_path / "results.csv"
    p.write_text(CSV_HEADER + "m,none,pgd,model,0.1,8,0,100,0.5,0.4,0.6\nm,none,pgd,model,big,8,0,100,0.3,0.2,0.4\n")
    _one_line_error(runner.invoke(main, ["plot", str(p)]), "results.csv line 3", "eps must be a number", "'big'")


def test_plot_reads_the_csv_it_is_given_even_beside_a_junk_jsonl(runner, tmp_path):
    p = tmp_path / "results.csv"
    p.write_text(CSV_HEADER + "m,none,pgd,model,0.0,8,0,100,0.9,0.8,0.95\nm,none,pgd,model,0.1,8,0,100,0.5,0.4,0.6\n")
    (tmp_path / "results.jsonl").write_text('{"junk": 1}\n[1, 2]\n')
    res = runner.invoke(main, ["plot", str(p), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "plots" / "accuracy_vs_eps.png").stat().st_size > 0
    _one_line_error(runner.invoke(main, ["plot", str(tmp_path / "results.jsonl")]), "not a robust-snn results row")
    # and the plots it made are not overwritten by a second run without --force
    _one_line_error(runner.invoke(main, ["plot", str(p), "--out", str(tmp_path / "plots")]), "accuracy_vs_eps.png", "--force")


# -- the Python API: inputs and weights ---------------------------------------------------------

def test_model_input_dtypes_and_ranges(tiny_model, eval_batch):
    x, _ = eval_batch
    x = x[:8]
    with torch.no_grad():
        ref = tiny_model(x)
        assert torch.equal(tiny_model(x.double()), ref)  # float64 is cast, not a traceback
        with pytest.raises(RobustSNNError, match=r"x.float\(\) / 255"):
            tiny_model((x * 255).round().to(torch.uint8))
        with pytest.raises(RobustSNNError, match="divide by 255"):
            tiny_model(x * 255)
        with pytest.raises(RobustSNNError, match="normalizes inside"):
            tiny_model((x - 0.1307) / 0.3081)
        bad = x.clone()
        bad[0, 0, 3, 3] = float("nan")
        with pytest.raises(RobustSNNError, match="NaN or inf"):
            tiny_model(bad)
        with pytest.raises(RobustSNNError, match="float images"):
            tiny_model(x.long())
        with pytest.raises(RobustSNNError, match=f"1, {MAX_NUM_STEPS}"):
            tiny_model(x, num_steps=MAX_NUM_STEPS + 1)
        with unchecked_inputs(tiny_model):  # randomized smoothing feeds noise on purpose
            tiny_model(x + 0.5 * torch.randn_like(x))
        with pytest.raises(RobustSNNError):  # and the check is back afterwards
            tiny_model(x * 255)


def test_float64_input_keeps_gradients(tiny_model, eval_batch):
    x = eval_batch[0][:4].double().requires_grad_(True)
    tiny_model(x).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float64 and torch.isfinite(x.grad).all()


def test_checkpoint_with_nan_weights_is_refused(runner, tmp_path):
    model = build_model("fcsnn", hidden=[16])
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.pt", model)
    with pytest.raises(RobustSNNError, match="NaN or inf"):
        load_model(path)
    _one_line_error(runner.invoke(main, ["eval", "--checkpoint", str(path), "--limit", "10"]), "NaN or inf", "retrain")


def test_truncated_checkpoint_message_is_short(runner, tmp_path, tiny_checkpoint):
    p = tmp_path / "cut.pt"
    p.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    out = _one_line_error(runner.invoke(main, ["eval", "--checkpoint", str(p), "--limit", "10"]), "truncated")
    assert len(out) < 100 + len(str(p)), out


# -- attack and eval options ----------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["attack", "--attack", "fgsm", "--samples", "0"], "--samples must be >= 1"),
    (["attack", "--attack", "fgsm", "--eot-samples", "0"], "--eot-samples must be >= 1"),
    (["eval", "--samples", "0"], "--samples must be >= 1"),
    (["eval", "--limit", "0"], "--limit must be >= 1"),
    (["eval", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["attack", "--attack", "fgsm", "--num-steps", "100000"], f"[1, {MAX_NUM_STEPS}]"),
    (["eval", "--num-steps", "0"], f"[1, {MAX_NUM_STEPS}]"),
])
def test_count_options_are_checked(runner, tiny_checkpoint, args, message):
    res = runner.invoke(main, args + ["--checkpoint", str(tiny_checkpoint), "--limit", "10"] if "--limit" not in args
                        else args + ["--checkpoint", str(tiny_checkpoint)])
    _one_line_error(res, message)


def test_sweep_spec_sample_counts_are_checked(tmp_path, tiny_checkpoint):
    from robust_snn.experiments.spec import load_spec

    p = tmp_path / "s.toml"
    p.write_text(f'name = "s"\neps = [0.1]\n[run]\nsamples = 0\n[[models]]\nname = "m"\ncheckpoint = "{tiny_checkpoint}"\n')
    with pytest.raises(RobustSNNError, match="samples must be a positive integer"):
        load_spec(p)


# -- app address ---------------------------------------------------------------------------------

def test_app_port_in_use_fails_before_announcing(runner, tiny_checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = runner.invoke(main, ["app", "--checkpoint", str(tiny_checkpoint), "--port", str(port)])
    out = _one_line_error(res, f"--port {port} is already in use", "choose another --port")
    assert "robust-snn app on" not in out


@pytest.mark.parametrize("host, message", [("999.1.1.1", "--host '999.1.1.1' is not a valid address"),
                                           ("192.0.2.77", "--host 192.0.2.77 is not an address of this machine")])
def test_app_bad_host_names_the_host(runner, tiny_checkpoint, host, message):
    res = runner.invoke(main, ["app", "--checkpoint", str(tiny_checkpoint), "--host", host, "--port", "7861"])
    _one_line_error(res, message)


# -- interrupted writes --------------------------------------------------------------------------

def test_sigkill_during_a_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "results.json"
    code = ("import os, signal, sys\nfrom robust_snn.utils import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n    tmp.write_text('half')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    stray = [p.name for p in tmp_path.iterdir()]
    assert len(stray) == 1 and stray[0].startswith(".results.json.") and not target.exists()
    from robust_snn.utils import write_json_atomic

    write_json_atomic(target, {"ok": True})
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    from robust_snn.utils import _host_tag, remove_stale_temporaries

    target = tmp_path / "r.json"
    live = tmp_path / f".r.json.{os.getppid()}@{_host_tag()}.abc.tmp"  # our parent is alive
    live.write_text("busy")
    legacy = tmp_path / f".r.json.{os.getppid()}.def.tmp"  # an earlier version's PID-only name
    legacy.write_text("busy")
    # another machine's writer on a shared filesystem: its PID means nothing here, dead or not
    remote = tmp_path / f".r.json.{2**22 + 1}@0000beef.ghi.tmp"
    remote.write_text("busy")
    dead = tmp_path / f".r.json.{2**22 + 1}@{_host_tag()}.jkl.tmp"  # above any PID this machine hands out
    dead.write_text("half")
    assert remove_stale_temporaries(target) == [dead]
    assert live.exists() and legacy.exists() and remote.exists() and not dead.exists()


def test_sweep_unwritable_out_fails_before_any_cell(runner, tmp_path, tiny_checkpoint):
    p = tmp_path / "s.toml"
    p.write_text(f'name = "s"\neps = [0.1]\n[[models]]\nname = "m"\ncheckpoint = "{tiny_checkpoint}"\n')
    _one_line_error(runner.invoke(main, ["sweep", str(p), "--out", UNWRITABLE]), "--out", "cannot write there")


def test_sweep_spec_problems_are_one_line(runner, tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "s"\neps = [2.0]\nseeds = [-1]\n[[models]]\nname = "m"\ncheckpoint = "default"\n[[attacks]]\nname = "nope"\n')
    _one_line_error(runner.invoke(main, ["sweep", str(p)]), "invalid experiment spec", "eps", "nope", "seeds")
