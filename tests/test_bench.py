"""The benchmark harness measures the same computation for robust-snn and every peer.

SpikingJelly is a benchmark-only extra (``pip install -e ".[bench]"``; CI installs ``.[dev]``):
its tests run when it is importable, and the harness must skip it with a note when it is not.
"""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
TINY = {"arch": "csnn", "channels": [4, 8], "hidden": [16]}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def needs_spikingjelly(bench):
    missing = bench.spikingjelly_missing()
    if missing:
        pytest.skip(missing)


def test_same_logits_and_flop_accounting(bench):
    import torch

    assert bench.check_same_logits(TINY, 4, torch.device("cpu")) < 1e-4  # also asserts the output layer fires
    model, _ = bench.build(TINY, 5, torch.device("cpu"))
    ours = bench.forward_flops(model, 5, layer_by_layer=True)
    base = bench.forward_flops(model, 5, layer_by_layer=False)
    conv1 = 2 * 28 * 28 * 4 * 9  # computed once by robust-snn, every step by the baseline
    assert base - ours == pytest.approx(4 * conv1)


@pytest.mark.parametrize("impl", ["ours", "ours-unfused", "ours-graphed", "snntorch", "spikingjelly"])
@pytest.mark.parametrize("mode", ["train", "infer", "pgd10"])
def test_measure_reports_throughput(bench, impl, mode):
    import torch

    if impl == "spikingjelly" and bench.spikingjelly_missing():
        pytest.skip(bench.spikingjelly_missing())
    res = bench.measure(impl, mode, TINY, 3, 4, torch.device("cpu"), 0.0)
    assert res["img_per_s"] > 0 and res["gflops"] > 0 and res["impl"] == impl
    if impl == "spikingjelly":
        assert res["backend"] == "torch"  # SpikingJelly's CPU LIF op


def test_spikingjelly_peer_is_the_same_network(bench, needs_spikingjelly):
    """Same spikes as robust-snn (up to ties) and the same input-gradient direction, on copied weights."""
    import torch
    import torch.nn.functional as F

    for T in (4, 9):
        assert bench.peer_agreement("spikingjelly", TINY, T, torch.device("cpu")) >= bench.MIN_AGREEMENT
    model, _ = bench.build(TINY, 6, torch.device("cpu"))
    peer = bench.make_peer("spikingjelly", model)
    x = bench._probe_batch(model, 16).requires_grad_(True)
    y = torch.arange(16) % 10
    g_ours, = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    g_peer, = torch.autograd.grad(F.cross_entropy(peer(x), y), x)
    assert F.cosine_similarity(g_ours.flatten(), g_peer.flatten(), dim=0) > 0.999  # SoftSign = fast sigmoid x k/2
    peer(x)  # reset_net before every call: a second call gives the same logits
    assert torch.equal(peer(x), peer(x))


def test_spikingjelly_peer_refuses_what_it_cannot_express(bench, needs_spikingjelly):
    import torch

    model, _ = bench.build({**TINY, "readout": "membrane"}, 3, torch.device("cpu"))
    with pytest.raises(bench.PeerUnsupported, match="readout 'membrane'"):
        bench.make_peer("spikingjelly", model)
    note = bench.peer_note("spikingjelly", {**TINY, "neuron": "alif"}, torch.device("cpu"))
    assert note.startswith("SpikingJelly peer skipped:") and "alif" in note


def test_quick_json_reports_every_installed_peer(bench, capsys):
    """``--quick --json`` (one mode, to keep CI short): SpikingJelly columns when installed, else its skip note."""
    import json

    report = bench.main(["--quick", "--json", "--modes", "infer"])
    out = capsys.readouterr()
    assert json.loads(out.out)["cases"]  # stdout is pure JSON
    (case,) = report["cases"]
    assert case["peers"]["snntorch"]["img_per_s"] > 0 and case["speedup"] == case["peers"]["snntorch"]["speedup"]
    assert case["baseline"]["impl"] == "snntorch" and report["max_logit_diff"]["4"] < 1e-4
    missing = bench.spikingjelly_missing()
    if missing:
        assert report["peers"] == ["snntorch"] and report["skipped_peers"] == {"spikingjelly": missing}
        assert "pip install" in out.err
    else:
        sj = case["peers"]["spikingjelly"]
        assert sj["img_per_s"] > 0 and sj["speedup"] > 0 and sj["peak_mb"] is not None and sj["backend"] == "torch"
        assert report["logit_agreement"]["spikingjelly"]["4"] >= bench.MIN_AGREEMENT
        assert report["spikingjelly"]["version"].startswith("2.") and not report["skipped_peers"]


def test_missing_spikingjelly_is_a_note_not_a_traceback(bench, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "spikingjelly", None)  # `import spikingjelly` now fails as if not installed
    note = bench.spikingjelly_missing()
    assert note.startswith("SpikingJelly peer skipped:") and 'pip install "spikingjelly==2.0.0"' in note
    report = bench.main(["--quick", "--modes", "infer", "--peers", "spikingjelly"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == note and "Traceback" not in out
    assert report["peers"] == [] and report["cases"][0]["peers"] == {} and report["cases"][0]["speedup"] is None
    assert "ours img/s" in out and "SJ img/s" not in out


def test_unknown_peer_is_a_usage_error(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--peers", "brian2"])
    assert "unknown peer(s) brian2" in capsys.readouterr().err


def test_out_file_is_written_after_every_case_and_failures_do_not_stop_the_run(bench, tmp_path, monkeypatch, capsys):
    """A device run cut short keeps the cases it measured; a failing peer is reported and the rest still run."""
    import json

    out = tmp_path / "bench.json"
    seen = []
    real_write = bench._write_report

    def spy(path, report):
        real_write(path, report)
        seen.append(json.loads(Path(path).read_text()))

    monkeypatch.setattr(bench, "_write_report", spy)
    real_run = bench.run_isolated

    def flaky(args, impl, mode, T):
        if impl == "snntorch" and mode == "pgd10":
            raise RuntimeError("measuring snntorch pgd10 failed: out of memory")
        return real_run(args, impl, mode, T)

    monkeypatch.setattr(bench, "run_isolated", flaky)
    report = bench.main(["--quick", "--modes", "infer,pgd10", "--peers", "snntorch", "--out", str(out)])
    assert [len(s["cases"]) for s in seen] == [1, 2, 2] and [s["complete"] for s in seen] == [False, False, True]
    assert json.loads(out.read_text())["complete"] is True
    infer, pgd = report["cases"]
    assert infer["peers"]["snntorch"]["img_per_s"] > 0 and pgd["peers"] == {} and pgd["ours"]["img_per_s"] > 0
    assert any("out of memory" in e for e in report["errors"])
    assert "failed" in capsys.readouterr().out  # the table marks the missing measurement
