"""torchrun: DDP training on real MNIST, sharded attacks and sweeps that equal the single-process run.

Two processes, gloo on loopback, CPU; every run is a real ``torchrun`` subprocess.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robust_snn.cli import main

TIMING_KEYS = {"seconds", "img_per_s", "clean_seconds", "command"}


def _torchrun(args, data_dir, *, nproc=2, timeout=600, popen=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUST_SNN_DATA": str(data_dir), "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "robust_snn", *args]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _kill_all(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker``."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _strip(obj):
    """A result without wall times and the command line (the only things allowed to differ)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_torchrun_training_on_real_mnist_writes_one_loadable_checkpoint(tmp_path, data_dir):
    from robust_snn import load_model
    from robust_snn.data import load_split

    out = tmp_path / "ddp.pt"
    # 7,600 training images, 32 per process per step: 119 steps per epoch, 357 in all
    proc = _torchrun(["-v", "train", "--out", str(out), "--epochs", "3", "--limit", "8000", "--channels", "4,8", "--hidden", "32",
                      "--num-steps", "4", "--batch-size", "32", "--lr", "5e-3", "--test-limit", "500", "--quiet"], data_dir)
    assert proc.stdout.count("saved ") == 1, proc.stdout  # rank 0 alone reports
    assert "DistributedDataParallel over 2 processes: 64 images per step" in proc.stderr
    model = load_model(out)
    recipe = model.checkpoint_recipe
    assert recipe["world_size"] == 2 and recipe["effective_batch_size"] == 64 and recipe["epochs_run"] == 3
    history = json.loads(out.with_name("ddp.log.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert not out.with_name("ddp.state.pt").exists()
    x, y = load_split("mnist", "test", data_dir=data_dir, limit=500)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.7, acc
    assert abs(acc - model.checkpoint_metrics["test_accuracy"]) < 1e-6


def test_torchrun_adversarial_training_validates_on_every_rank_and_keeps_one_epoch(tmp_path, data_dir):
    """TRADES with APGD crafting through a gradient family under DDP: the validation suite is sharded by ``evaluate``,
    its gathered worst case is logged, and the checkpoint holds the epoch with the best of those scores."""
    out = tmp_path / "ddp-at.pt"
    _torchrun(["-v", "train", "--out", str(out), "--epochs", "2", "--limit", "2000", "--val-split", "0.1", "--channels", "4,8",
               "--hidden", "32", "--num-steps", "4", "--batch-size", "25", "--lr", "1e-2", "--adv-warmup", "1", "--adv", "trades",
               "--adv-attack", "apgd", "--adv-steps", "2", "--adv-eps", "0.1", "--adv-gradients", "model,fast_sigmoid:slope=5",
               "--val-attack-samples", "60", "--val-attack-steps", "2", "--test-limit", "100", "--quiet"], data_dir)
    meta = torch.load(out, weights_only=True)
    history = json.loads(out.with_name("ddp-at.log.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all(0 <= h["val_robust_accuracy"] <= 1 for h in history)
    best = max(history, key=lambda h: (h["val_robust_accuracy"], h["val_accuracy"]))
    assert meta["metrics"]["selected_epoch"] == best["epoch"] and meta["recipe"]["world_size"] == 2


def test_torchrun_training_resumes_after_sigkill(tmp_path, data_dir):
    out = tmp_path / "r.pt"
    args = ["train", "--out", str(out), "--epochs", "3", "--limit", "4000", "--channels", "4,8", "--hidden", "32",
            "--num-steps", "4", "--batch-size", "32", "--test-limit", "200", "--quiet"]
    proc = _torchrun(args, data_dir, popen=True)
    state = out.with_name("r.state.pt")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not state.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    _kill_all(str(out))  # the launcher and its workers (they run in sessions of their own)
    proc.wait()
    done = json.loads(out.with_name("r.log.json").read_text())
    assert 1 <= len(done) < 3 and not out.exists()
    # the schedule depends on the steps per epoch: resuming with another number of processes is refused
    other = CliRunner().invoke(main, [*args, "--resume", "--data-dir", str(data_dir)])
    assert other.exit_code == 1 and "written by a run with 2 process(es)" in other.output, other.output
    resumed = _torchrun(["-v", *args, "--resume"], data_dir)
    assert f"resuming from {state}" in resumed.stderr, resumed.stderr
    history = json.loads(out.with_name("r.log.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0] == done[0]  # the epoch before the kill is kept, not rerun
    assert out.is_file() and not state.exists()


@pytest.fixture(scope="module")
def rate_checkpoint(tmp_path_factory, data_dir):
    """A tiny rate-coded (stochastic) CSNN."""
    from robust_snn.training import TrainSettings, train

    out = tmp_path_factory.mktemp("rate") / "rate.pt"
    settings = TrainSettings(epochs=3, batch_size=50, lr=5e-3, limit=2000, val_split=0.0, test_limit=200, seed=0)
    _, metrics = train({"arch": "csnn", "channels": [4, 8], "hidden": [32], "num_steps": 6, "encoding": "rate", "threshold": 0.3},
                       settings, out=out, data_dir=str(data_dir), device="cpu", progress=False)
    # only needs to be a working (non-silent) stochastic model: 26.5 % on an AMD EPYC, above 30 % on Intel
    # machines; chance is 10 %, so 15 % keeps a wide margin on both
    assert metrics["test_accuracy"] > 0.15
    return out


@pytest.mark.parametrize("encoding", ["direct", "rate", "direct+detector"])
def test_sharded_attack_equals_the_single_process_run(encoding, tiny_checkpoint, rate_checkpoint, data_dir, tmp_path):
    ckpt = rate_checkpoint if encoding == "rate" else tiny_checkpoint
    limit = {"direct": "256", "rate": "96", "direct+detector": "64"}[encoding]
    args = ["attack", "--checkpoint", str(ckpt), "--limit", limit, "--batch-size", "32", "--attack", "fgsm,pgd",
            "--eps", "0.05,0.15", "--steps", "5", "--restarts", "2", "--json"]
    if encoding == "rate":
        args += ["--eot-samples", "2", "--samples", "2"]
    if encoding == "direct+detector":  # detector scores, rejection and the adaptive pgd-tcc, sharded too
        args += ["--detector", "tcc:fpr=0.05", "--calibration-size", "100"]
    sharded = json.loads(_torchrun([*args, "--out", str(tmp_path / "sharded")], data_dir).stdout)
    single = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "single"), "--data-dir", str(data_dir)])
    assert single.exit_code == 0, single.output
    single = json.loads(single.output)
    assert [r["robust_accuracy"] for r in sharded["results"]] == [r["robust_accuracy"] for r in single["results"]]
    if "detector" in encoding:
        assert [r["attack"] for r in single["results"]][-1] == "pgd-tcc"
        assert all(r["robust_accuracy_with_rejection"] >= r["robust_accuracy"] for r in single["results"])
    assert 0 < single["worst_case"][-1]["robust_accuracy"] < single["clean_accuracy"]
    files_sharded = {k: v for k, v in _strip(sharded).items() if k != "files"}
    files_single = {k: v for k, v in _strip(single).items() if k != "files"}
    assert files_sharded == files_single
    a = torch.load(tmp_path / "sharded" / "adversarial.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "adversarial.pt", weights_only=True)
    assert len(a["adversarial"]) == (6 if "detector" in encoding else 4) and _same(a, b)  # the adversarial images themselves, bit for bit


def test_a_killed_torchrun_attack_resumes_from_its_journal_in_one_process(tiny_checkpoint, data_dir, tmp_path):
    """SIGKILL a sharded run mid-way; one process finishes it from the journal, with the uninterrupted numbers."""
    journal = tmp_path / "journal"
    args = ["attack", "--checkpoint", str(tiny_checkpoint), "--limit", "256", "--batch-size", "32", "--suite", "validation",
            "--eps", "0.05,0.15", "--steps", "10", "--json"]
    proc = _torchrun([*args, "--journal", str(journal)], data_dir, popen=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(journal.rglob("chunks/*.pt"))) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "the attack ended before it could be killed: " + proc.communicate()[1][-3000:]
    _kill_all(str(journal))
    proc.wait()
    runner = CliRunner()
    resumed = runner.invoke(main, [*args, "--journal", str(journal), "--data-dir", str(data_dir), "--out", str(tmp_path / "r")])
    assert resumed.exit_code == 0, resumed.output
    resumed = json.loads(resumed.output)
    assert resumed["journal"]["reused_chunks"] >= 2 and resumed["journal"]["written_chunks"] > 0
    plain = runner.invoke(main, [*args, "--data-dir", str(data_dir), "--out", str(tmp_path / "p")])
    assert plain.exit_code == 0, plain.output
    plain = json.loads(plain.output)
    assert plain["worst_case"][-1]["robust_accuracy"] < plain["clean_accuracy"]
    assert {k: v for k, v in _strip(resumed).items() if k not in ("journal", "files")} == \
        {k: v for k, v in _strip(plain).items() if k != "files"}
    a = torch.load(tmp_path / "r" / "adversarial.pt", weights_only=True)
    b = torch.load(tmp_path / "p" / "adversarial.pt", weights_only=True)
    assert len(a["adversarial"]) == 3 * 2 and _same(a, b)  # 3 stages x 2 budgets: the images themselves, bit for bit


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def test_sharded_sweep_writes_the_single_process_rows(tiny_checkpoint, data_dir, tmp_path):
    spec = tmp_path / "exp.toml"
    spec.write_text(f'name = "tiny"\neps = [0.0, 0.1]\n[data]\nlimit = 100\n[run]\nbatch_size = 32\ndevice = "cpu"\n'
                    f'[[models]]\nname = "tiny"\ncheckpoint = "{tiny_checkpoint}"\n'
                    '[[attacks]]\nname = "pgd"\nsteps = 5\n[[attacks]]\nname = "fgsm"\n')
    proc = _torchrun(["sweep", str(spec), "--out", str(tmp_path / "sharded"), "--json"], data_dir)
    summary = json.loads(proc.stdout)
    assert summary["complete"] and summary["new"] == 4
    res = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "single"), "--data-dir", str(data_dir), "--json"])
    assert res.exit_code == 0, res.output

    def rows(folder):
        with open(tmp_path / folder / "results.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    assert rows("sharded") == rows("single") and len(rows("single")) == 4
    assert (tmp_path / "sharded" / "worst_case.csv").read_text() == (tmp_path / "single" / "worst_case.csv").read_text()
    masks = [[json.loads(line)["robust_mask"] for line in (tmp_path / f / "results.jsonl").read_text().splitlines()]
             for f in ("sharded", "single")]
    assert masks[0] == masks[1]


def test_chunks_deal_round_robin_and_cover_every_sample_once():
    from robust_snn.distributed import Chunks

    parts = [Chunks(10, 3, rank=r, world=3) for r in range(3)]
    assert [[c for c, _ in p.mine()] for p in parts] == [[0, 3], [1], [2]]
    owned = torch.stack([p.owned for p in parts]).int()
    assert torch.equal(owned.sum(0), torch.ones(10, dtype=torch.int))
    single = Chunks(10, 3)
    t = torch.arange(10.0)
    assert single.gather(t) is t and single.all == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_shard_epoch_matches_distributed_sampler_dealing():
    from robust_snn.training import shard_epoch

    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shard_epoch(perm, 0, 1), perm)
    shards = [shard_epoch(perm, r, 3) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded to 12: equal steps on every rank
    assert set(torch.cat(shards).tolist()) == set(perm.tolist())
    assert torch.equal(shards[1], perm[torch.tensor([1, 4, 7, 10])])


def test_plain_process_is_not_distributed(monkeypatch):
    from robust_snn import distributed
    from robust_snn.errors import RobustSNNError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.init("cpu")
    assert (d.rank, d.world, d.is_main, d.enabled) == (0, 1, True, False)
    t = torch.ones(3)
    assert distributed.sum_rows(t, torch.tensor([True, False, True])) is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.max_float(2.5) == 2.5
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RobustSNNError, match="launch with torchrun"):
        distributed.init("cpu")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RobustSNNError, match="use --device cuda"):  # every rank would take the same GPU
        distributed.init("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "two")
    res = CliRunner().invoke(main, ["info"])
    assert res.exit_code == 1 and "WORLD_SIZE must be an integer" in res.output and "Traceback" not in res.output


def test_commands_without_sharding_refuse_torchrun(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = CliRunner().invoke(main, ["eval", "--limit", "10"])
    assert res.exit_code == 1 and "'eval' runs as one process" in res.output and "Traceback" not in res.output


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "robust_snn", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Usage: robust-snn" in proc.stdout and "train" in proc.stdout

