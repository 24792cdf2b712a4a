"""Visualization: every figure on a tiny model, the CLI files, the GIF frames and the per-layer distances."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from robust_snn.attacks import evaluate
from robust_snn.cli import main
from robust_snn.models import Recording, build_model
from robust_snn.plotting import plt
from robust_snn.visualization import (Trace, adversarial_leader_changes, conv_maps_figure, fc_raster_figure, images_figure,
                                      input_figure, layer_activity_figure, layer_distances, output_figure, plot_running_vote,
                                      spike_animation, trace, tsne, tsne_figure, van_rossum_distance)


@pytest.fixture()
def pair(tiny_model, eval_batch):
    x, y = eval_batch
    res = evaluate(tiny_model, x[:8], y[:8], attacks=["pgd"], eps=[0.3], steps=10, checks=False, keep_examples=True)
    x_adv = res["examples"]["pgd@0.3"]
    i = int(torch.nonzero((x_adv - x[:8]).flatten(1).abs().amax(1) > 0)[0])
    return trace(tiny_model, x[i]), trace(tiny_model, x_adv[i]), int(y[i])


def test_every_figure_has_its_axes(pair):
    clean, adv, label = pair
    # colorbars add axes: images 3 + 1, direct input 2 + 2
    expected = [(images_figure(clean, adv, label=label), 4), (input_figure(clean, adv, static=True), 4),
                (conv_maps_figure(clean, adv, timestep=1), 3), (fc_raster_figure(clean, adv), 2),
                (output_figure(clean, adv, label=label), 2), (layer_activity_figure(clean, adv), 2)]
    for fig, n in expected:
        assert len(fig.axes) == n, fig.axes[0].get_title()


def _output_only(spikes):
    """A hand-made trace with only an output layer: ``spikes`` ``[T, K]``."""
    spk = torch.tensor(spikes, dtype=torch.float32)[:, None]
    return Trace(torch.zeros(1, 1, 2, 2), spk.sum(0)[0], Recording(["output"], [spk], [None], torch.zeros(len(spikes), 1, 1, 2, 2)))


def test_running_vote_lines_are_distinct_and_leader_changes_visible():
    clean = _output_only([[1, 0], [1, 0], [1, 0], [1, 0]])
    adv = _output_only([[1, 0], [0, 1], [0, 1], [0, 1]])  # running vote: 0 leads, tie (argmax 0), then 1 leads from step 2
    assert adversarial_leader_changes(adv) == [2] and adversarial_leader_changes(clean) == []
    fig, ax = plt.subplots()
    plot_running_vote(ax, clean, adv, names=["zero", "one"])
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for cls in ("zero", "one"):  # one colour per class; clean and adversarial differ in line style, width and marker
        c, a = lines[f"class {cls}, clean"], lines[f"class {cls}, adversarial"]
        assert c.get_color() == a.get_color()
        assert (c.get_linestyle(), c.get_marker()) != (a.get_linestyle(), a.get_marker()) and c.get_linewidth() > a.get_linewidth()
    assert lines["class zero, clean"].get_color() != lines["class one, clean"].get_color()
    mark = lines["adversarial leader changes"]
    assert list(mark.get_xdata()) == [2, 2] and mark.get_linewidth() >= 1.5 and mark.get_color() == "black"
    assert "adversarial leader changes" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


def test_rate_encoded_input_raster_and_fcsnn_without_conv():
    torch.manual_seed(0)
    model = build_model("fcsnn", hidden=[16], num_steps=5, encoding="rate").eval()
    x = torch.rand(1, 28, 28)
    a, b = trace(model, x), trace(model, x.clamp(0, 1) * 0.5)
    fig = input_figure(a, b, static=False)
    assert len(fig.axes) == 2 and "input spikes" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="no convolutional"):
        conv_maps_figure(a, b, timestep=0)
    assert len(fc_raster_figure(a, b).axes) == 2


def test_same_encoder_draw_for_clean_and_adversarial_traces():
    torch.manual_seed(0)
    model = build_model("fcsnn", hidden=[16], num_steps=6, encoding="rate").eval()
    x = torch.rand(1, 28, 28)
    assert torch.equal(trace(model, x, seed=3).rec.input_seq, trace(model, x, seed=3).rec.input_seq)


def test_layer_distance_zero_for_identical_and_positive_for_pgd(pair):
    clean, adv, _ = pair
    for row in layer_distances(clean, clean):
        assert row["differing_fraction"] == 0 and row["van_rossum"] == 0 and row["rate_clean"] == row["rate_adversarial"]
    rows = layer_distances(clean, adv)
    assert all(r["differing_fraction"] > 0 and r["van_rossum"] > 0 for r in rows[:-1])
    assert sum(r["van_rossum"] for r in rows) > 0


def test_van_rossum_on_hand_made_trains():
    a = torch.zeros(10, 1)
    b = torch.zeros(10, 1)
    a[2] = 1
    b[2] = 1
    assert van_rossum_distance(a, b) == 0
    c = torch.zeros(10, 1)
    c[3] = 1
    d = torch.zeros(10, 1)
    d[8] = 1
    assert 0 < van_rossum_distance(a, c) < van_rossum_distance(a, d)  # a shifted spike is closer than a distant one


def test_tsne_separates_clusters():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(12, 1, (30, 5))])
    emb = tsne(f, perplexity=10, iterations=300)
    assert emb.shape == (60, 2)
    within = np.linalg.norm(emb[:30] - emb[:30].mean(0), axis=1).mean()
    between = np.linalg.norm(emb[:30].mean(0) - emb[30:].mean(0))
    assert between > 3 * within


def test_tsne_figure(tiny_model, eval_batch):
    x, y = eval_batch
    fig = tsne_figure(tiny_model, x[:20], (x[:20] + 0.1).clamp(0, 1), y[:20])
    assert len(fig.axes) == 1


def test_animation_has_t_frames(pair, tmp_path):
    clean, adv, _ = pair
    path = tmp_path / "a.gif"
    assert spike_animation(clean, adv, path) == 4
    im = Image.open(path)
    assert im.n_frames == 4 and path.stat().st_size > 0


def test_visualize_cli_writes_files(tiny_checkpoint, data_dir, tmp_path):
    out = tmp_path / "v"
    res = CliRunner().invoke(main, ["visualize", "--checkpoint", str(tiny_checkpoint), "--digit", "7", "--eps", "0.3", "--steps", "5",
                                    "--out", str(out), "--tsne-samples", "20", "--data-dir", str(data_dir), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["label"] == 7 and data["frames"] == 4 and len(data["layers"]) == 4
    names = sorted(p.name for p in out.iterdir())
    assert names == ["1_images.png", "2_input.png", "3_conv_maps_t2.png", "4_fc_raster.png", "5_output.png", "6_activity.png",
                     "7_animation.gif", "8_tsne.png", "summary.json"]
    assert all((out / n).stat().st_size > 0 for n in names)
    assert Image.open(out / "7_animation.gif").n_frames == 4
    res = CliRunner().invoke(main, ["visualize", "--checkpoint", str(tiny_checkpoint), "--index", "3", "--format", "svg",
                                    "--tsne-samples", "0", "--out", str(tmp_path / "s"), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "1_images.svg").stat().st_size > 0 and "van Rossum" in res.output


@pytest.mark.parametrize("args,msg", [(["--index", "99999"], "--index must be"), (["--digit", "12"], "--digit must be"),
                                      (["--timestep", "50"], "--timestep must be"), (["--attack", "nope"], "unknown attack"),
                                      (["--index", "1", "--digit", "2"], "not both")])
def test_visualize_bad_input(tiny_checkpoint, data_dir, tmp_path, args, msg):
    res = CliRunner().invoke(main, ["visualize", "--checkpoint", str(tiny_checkpoint), "--tsne-samples", "0", "--out", str(tmp_path),
                                    "--data-dir", str(data_dir), *args])
    assert res.exit_code != 0 and msg in res.output and "Traceback" not in res.output
