"""Synthetic N-MNIST: the simulator, N-MNIST's file format, and tonic reading the files back."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robust_snn.cli import main
from robust_snn.data import load_split
from robust_snn.events import SensorModel, encode_nmnist, simulate
from robust_snn.events.synthetic import SENSOR, saccade_path

DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])


def test_saccades_follow_the_triangle_and_return():
    path = saccade_path(300)
    assert path.shape == (300, 2) and np.allclose(path[0], path[-1], atol=0.1)
    assert path[:, 0].min() >= 0 and path[:, 1].max() <= SENSOR - 28  # the digit stays on the sensor


def test_events_are_deterministic_sorted_and_on_the_moving_digit():
    x, _ = load_split("mnist", "test", limit=3)
    digit = x[1, 0].numpy()
    ev = simulate(digit, seed=7)
    again = simulate(digit, seed=7)
    assert all(np.array_equal(ev[k], again[k]) for k in "xytp")
    assert len(ev["t"]) > 500 and np.all(np.diff(ev["t"]) >= 0) and 0 <= ev["t"].min() and ev["t"].max() < 300_000
    assert 0.3 < ev["p"].mean() < 0.7  # ON and OFF edges alike
    support = np.zeros((SENSOR, SENSOR), bool)  # where the digit's ink ever is during the saccades
    ys, xs = np.nonzero(digit > 0)
    for dx, dy in np.floor(saccade_path(300)).astype(int):
        for ox in (0, 1):
            for oy in (0, 1):
                support[np.clip(ys + dy + oy, 0, SENSOR - 1), np.clip(xs + dx + ox, 0, SENSOR - 1)] = True
    assert support[ev["y"], ev["x"]].all()  # no events where nothing moves (no noise asked)
    noisy = simulate(digit, seed=7, sensor=SensorModel(noise_hz=5.0))
    assert len(noisy["t"]) > len(ev["t"]) and not support[noisy["y"], noisy["x"]].all()
    assert len(simulate(np.zeros((28, 28), np.float32), seed=0)["t"]) == 0  # a blank screen makes no events


def test_nmnist_binary_format_round_trips_through_tonic():
    from tonic.io import read_mnist_file

    ev = {"x": np.array([0, 33, 5]), "y": np.array([0, 33, 7]), "t": np.array([0, 1000, 2**23 - 1]), "p": np.array([1, 0, 1])}
    data = encode_nmnist(ev)
    assert len(data) == 15
    import io

    back = read_mnist_file(io.BytesIO(data), dtype=DTYPE, is_stream=True)
    assert all(back[k].tolist() == ev[k].tolist() for k in "xytp")
    from robust_snn.errors import RobustSNNError

    with pytest.raises(RobustSNNError, match="23 bits"):
        encode_nmnist({**ev, "t": np.array([0, 1, 2**23])})
    with pytest.raises(RobustSNNError, match="240"):
        encode_nmnist({**ev, "y": np.array([0, 240, 1])})


def test_make_nmnist_writes_tonics_layout_and_tonic_reads_it(tmp_path):
    import tonic

    res = CliRunner().invoke(main, ["make-nmnist", "--out", str(tmp_path), "--limit", "12", "--seed", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "wrote 12 synthetic N-MNIST files" in res.output and "not the real recordings" in res.output
    files = sorted((tmp_path / "NMNIST" / "Test").glob("*/*.bin"))
    assert "make-nmnist" in (tmp_path / "NMNIST" / "SYNTHETIC").read_text()  # marks the folder as synthetic
    _, y = load_split("mnist", "test", limit=12)
    assert len(files) == 12 and sorted(int(f.parent.name) for f in files) == sorted(y.tolist())
    ev = tonic.io.read_mnist_file(str(files[0]), dtype=DTYPE)
    frames = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_time_bins=8)(ev)
    # tonic's ToFrame leaves out the event on the last bin's closing edge
    assert frames.shape == (8, 2, 34, 34) and len(ev) - 1 <= frames.sum() <= len(ev) and (frames[:, 0].sum() > 0) and (frames[:, 1].sum() > 0)
    assert torch.from_numpy(frames).float().sum() > 0
    # never overwrite without --force; reproducible with it
    again = CliRunner().invoke(main, ["make-nmnist", "--out", str(tmp_path), "--limit", "12", "--seed", "3", "--quiet"])
    assert again.exit_code == 1 and "--force" in again.output
    before = files[0].read_bytes()
    forced = CliRunner().invoke(main, ["make-nmnist", "--out", str(tmp_path), "--limit", "12", "--seed", "3", "--quiet", "--force"])
    assert forced.exit_code == 0 and files[0].read_bytes() == before


def test_event_frames_load_balanced_and_binary(synthetic_nmnist):
    x, y = load_split("nmnist", "test", data_dir=synthetic_nmnist, num_steps=5, limit=40)
    assert x.shape == (40, 5, 2, 34, 34) and set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.bincount(y, minlength=10).tolist() == [4] * 10  # interleaved across digits


def test_spiking_cnn_trains_on_synthetic_nmnist_well_above_chance(synthetic_nmnist, scnn_checkpoint, tmp_path):
    import json

    from robust_snn import load_model

    model = load_model(scnn_checkpoint)
    assert model.config["input"] == "events" and model.config["arch"] == "scnn"
    # measured 57.5-62.5 % (1 and 2 threads, and without AVX2 kernels) on 200 synthetic test digits; chance is 10 %
    assert model.checkpoint_metrics["test_accuracy"] > 0.25, model.checkpoint_metrics
    ev = CliRunner().invoke(main, ["eval", "--checkpoint", str(scnn_checkpoint), "--data-dir", str(synthetic_nmnist), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.output)["accuracy"] == pytest.approx(model.checkpoint_metrics["test_accuracy"])
    refused = CliRunner().invoke(main, ["train", "--model", "scnn", "--dataset", "nmnist", "--data-dir", str(synthetic_nmnist),
                                        "--adv", "pgd", "--out", str(tmp_path / "x.pt")])
    assert refused.exit_code == 1 and "image datasets" in refused.output


def test_event_attacks_stay_binary_within_an_exact_l0_budget(synthetic_nmnist, scnn_checkpoint):
    from robust_snn import load_model
    from robust_snn.attacks import evaluate
    from robust_snn.errors import RobustSNNError
    from robust_snn.threat import THREAT_MODELS

    model = load_model(scnn_checkpoint)
    x, y = load_split("nmnist", "test", data_dir=synthetic_nmnist, num_steps=6, limit=60)
    res = evaluate(model, x, y, attacks=["flip-greedy", "flip-random"], eps_l0=[0, 20], keep_examples=True)
    l0 = THREAT_MODELS["L0"]
    for attack in ("flip-greedy", "flip-random"):
        adv = res.example(attack, 20)
        assert l0.in_domain(adv) and l0.distance(adv, x).max() <= 20  # binary, at most 20 flipped entries
        row = res.row(attack, 20)
        assert row["within_bound"] and row["in_range"] and row["l0_max"] <= 20
        assert row["robust_accuracy"] < res.clean_accuracy
        assert res.row(attack, 0)["robust_accuracy"] == res.clean_accuracy  # no budget, no change
    assert res.worst(20, "L0")["robust_accuracy"] < res.clean_accuracy
    with pytest.raises(RobustSNNError, match="image attacks"):
        evaluate(model, x, y, attacks=["fgsm"], eps=[0.1])
    image_model = load_model()
    xi, yi = load_split("mnist", "test", limit=8)
    with pytest.raises(RobustSNNError, match="need a model that takes event tensors"):
        evaluate(image_model, xi, yi, attacks=["flip-random"], eps_l0=[5])


def test_event_models_get_the_events_suite_by_default(synthetic_nmnist, scnn_checkpoint):
    from robust_snn import load_model
    from robust_snn.attacks import evaluate

    model = load_model(scnn_checkpoint)
    x, y = load_split("nmnist", "test", data_dir=synthetic_nmnist, num_steps=6, limit=40)
    res = evaluate(model, x, y, eps_l0=[20])  # no attacks, no suite: the model's default suite
    assert res["suite"] == "events" and res["robustness_claim"] is False
    from robust_snn.attacks.suite import SUITES

    stages = [st.attack for st in SUITES["events"].stages]
    assert [r["attack"] for r in res.rows] == stages and stages[0] == "flip-greedy" and stages[-1] == "flip-random"
    for before, row in zip(res.rows, res.rows[1:]):  # cascade: each stage attacks the survivors of the ones before
        assert row["attacked"] == round(before["robust_accuracy"] * len(y))
    assert res.rows[-1]["attacked"] == int(res.worst_mask(20, "L0").sum()) + res.rows[-1]["broken"]

    base = ["attack", "--checkpoint", str(scnn_checkpoint), "--data-dir", str(synthetic_nmnist), "--limit", "30"]
    out = CliRunner().invoke(main, base + ["--budget", "0,20"])
    assert out.exit_code == 0, out.output
    assert "suite: events" in out.output and "WARNING: events suite" in out.output and "flip-random" in out.output
    plain = CliRunner().invoke(main, base)  # no budget either: the default L0 budget
    assert plain.exit_code == 0 and "suite: events" in plain.output, plain.output
    refused = CliRunner().invoke(main, base + ["--eps", "0.1"])
    assert refused.exit_code != 0 and "its budgets are events (--budget)" in refused.output
    assert "Traceback" not in refused.output


def test_denoise_defense_is_attacked_adaptively_and_by_transfer(synthetic_nmnist, scnn_checkpoint):
    import json

    base = ["attack", "--checkpoint", str(scnn_checkpoint), "--data-dir", str(synthetic_nmnist), "--limit", "30", "--budget", "20",
            "--defense", "denoise:window=1", "--json"]
    for extra in ([], ["--no-adaptive"]):
        out = CliRunner().invoke(main, base + extra)
        assert out.exit_code == 0, out.output
        res = json.loads(out.output[out.output.index("{"):])
        assert res["defense"] == "denoise:window=1" and res["adaptive"] is (not extra)
        assert all(r["within_bound"] and r["in_range"] and r["l0_max"] <= 20 for r in res["results"])
    blur = CliRunner().invoke(main, base[:-3] + ["--defense", "blur"])
    assert blur.exit_code != 0 and "use denoise" in blur.output and "Traceback" not in blur.output


def test_budget_and_knobs_are_checked_against_the_suite_that_runs(synthetic_nmnist, scnn_checkpoint):
    image = CliRunner().invoke(main, ["attack", "--limit", "5", "--budget", "10"])  # an image model
    assert image.exit_code != 0 and "this model takes images" in image.output and "Traceback" not in image.output
    steps = CliRunner().invoke(main, ["attack", "--checkpoint", str(scnn_checkpoint), "--data-dir", str(synthetic_nmnist),
                                      "--limit", "5", "--queries", "50"])  # the events suite has no queries
    assert steps.exit_code != 0 and "--queries is used by none of the attacks" in steps.output
