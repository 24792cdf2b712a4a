"""The benchmark harness measures the same computation for both implementations."""
import importlib.util
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


def test_same_logits_and_flop_accounting(bench):
    import torch

    assert bench.check_same_logits(TINY, 4, torch.device("cpu")) < 1e-4
    model, _ = bench.build(TINY, 5, torch.device("cpu"))
    ours = bench.forward_flops(model, 5, layer_by_layer=True)
    base = bench.forward_flops(model, 5, layer_by_layer=False)
    conv1 = 2 * 28 * 28 * 4 * 9  # computed once by robust-snn, every step by the baseline
    assert base - ours == pytest.approx(4 * conv1)


@pytest.mark.parametrize("impl", ["ours", "ours-unfused", "baseline"])
@pytest.mark.parametrize("mode", ["train", "infer", "pgd10"])
def test_measure_reports_throughput(bench, impl, mode):
    import torch

    res = bench.measure(impl, mode, TINY, 3, 4, torch.device("cpu"), 0.0)
    assert res["img_per_s"] > 0 and res["gflops"] > 0 and res["impl"] == impl
