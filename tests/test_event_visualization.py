"""Visualization of event models: the per-bin event grid, its GIF, the other figures on event traces, render_all, refusals.

A freshly initialised tiny spiking CNN (its fully connected weights scaled up so that the output layer spikes) and
hand-made binary frames with known flips: figure tests need no training and no data files.
"""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from robust_snn.errors import RobustSNNError
from robust_snn.models import build_model
from robust_snn.plotting import EVENT_COLORS, event_change_rgb, event_frame_rgb, plt
from robust_snn.visualization import (conv_maps_figure, event_animation, event_changes, events_figure, fc_raster_figure,
                                      images_figure, input_figure, layer_activity_figure, layer_distances, output_figure,
                                      render_all, spike_animation, trace, tsne_figure)

T = 4


def _rgb(name):
    from matplotlib.colors import to_rgb

    return np.asarray(to_rgb(EVENT_COLORS[name]))


@pytest.fixture(scope="module")
def event_model():
    torch.manual_seed(0)
    model = build_model("scnn", dataset="nmnist", input="events", in_channels=2, image_size=(34, 34), channels=[4, 8, 8],
                        hidden=[32], num_steps=T, threshold=0.5).eval()
    with torch.no_grad():  # untrained, the output layer would be silent; louder weights make it vote
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def frames():
    """Clean frames ``[T, 2, 34, 34]`` and an adversarial copy with known flips, one pixel with both an add and a removal."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(T, 2, 34, 34, generator=g) < 0.08).float()
    x[0, :, 5, 5] = torch.tensor([0.0, 1.0])  # pixel (5, 5) of bin 0: OFF empty, ON set
    x[1, :, 9, 9] = 1.0
    adv = x.clone()
    adv[0, 0, 5, 5] = 1.0  # add OFF ...
    adv[0, 1, 5, 5] = 0.0  # ... remove ON: the same pixel, both kinds of change
    adv[1, 1, 9, 9] = 0.0  # a removal
    adv[2, 0, 3, 30] = 1 - x[2, 0, 3, 30]
    adv[3, :, 20, 20] = 1 - x[3, :, 20, 20]
    return x, adv


@pytest.fixture(scope="module")
def event_pair(event_model, frames):
    x, adv = frames
    return trace(event_model, x), trace(event_model, adv)


def test_event_changes_are_exactly_adv_above_and_below_clean():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 3, (3, 2, 6, 6), generator=g).float()  # counts, not only {0, 1}
    adv = torch.randint(0, 3, (3, 2, 6, 6), generator=g).float()
    added, removed = event_changes(x, adv)
    assert added.dtype == bool and np.array_equal(added, (adv > x).numpy()) and np.array_equal(removed, (adv < x).numpy())
    assert int(added.sum() + removed.sum()) == int((adv != x).sum())
    assert not event_changes(x, x)[0].any() and not event_changes(x, x)[1].any()
    with pytest.raises(ValueError, match="differ in shape"):
        event_changes(x, adv[:2])


def test_panels_draw_polarities_and_the_exact_added_and_removed_masks(event_pair, frames):
    clean, adv = event_pair
    x, xa = frames[0].numpy(), frames[1].numpy()
    fig = events_figure(clean, adv, attack="flip-greedy", budget=9, label=3)
    axes = np.asarray(fig.axes).reshape(3, T)
    added, removed = event_changes(x, xa)
    for t in range(T):
        assert np.array_equal(axes[0, t].images[0].get_array(), event_frame_rgb(x[t]))
        assert np.array_equal(axes[1, t].images[0].get_array(), event_frame_rgb(xa[t]))
        img = np.asarray(axes[2, t].images[0].get_array())
        a, r = (xa[t] > x[t]).any(0), (xa[t] < x[t]).any(0)  # independent of the helper: the definition itself
        for mask, key in ((a & ~r, "added"), (r & ~a, "removed"), (a & r, "added+removed")):
            is_colour = np.all(img == _rgb(key), axis=-1)
            assert np.array_equal(is_colour, mask), (t, key)
        assert axes[2, t].get_xlabel() == f"+{int(added[t].sum())} / −{int(removed[t].sum())}"
    assert np.all(axes[2, 0].images[0].get_array()[5, 5] == _rgb("added+removed"))
    assert np.all(axes[2, 1].images[0].get_array()[9, 9] == _rgb("removed"))
    # polarity colours: channel 1 is ON (tonic's order), channel 0 OFF, both purple, nothing white
    f = np.zeros((2, 2, 2))
    f[1, 0, 0] = f[0, 0, 1] = f[0, 1, 0] = f[1, 1, 0] = 1
    rgb = event_frame_rgb(f)
    assert np.all(rgb[0, 0] == _rgb("ON")) and np.all(rgb[0, 1] == _rgb("OFF")) and np.all(rgb[1, 0] == _rgb("ON+OFF"))
    assert np.all(rgb[1, 1] == 1.0)
    assert np.all(event_change_rgb(np.zeros((2, 1, 1), bool), np.zeros((2, 1, 1), bool), np.ones((2, 1, 1))) == _rgb("unchanged"))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("added" in s for s in legend) and any("removed" in s for s in legend) and "ON event" in legend and "OFF event" in legend
    plt.close(fig)


def test_title_gives_the_l0_of_the_perturbation(event_pair, frames):
    clean, adv = event_pair
    x, xa = frames
    fig = events_figure(clean, adv, attack="flip-greedy", budget=9)
    title = fig._suptitle.get_text()
    assert int(re.search(r"L0 = (\d+)", title).group(1)) == int((xa != x).sum()) == 6
    assert "flip-greedy" in title and "budget 9" in title
    assert [a.get_title() for a in np.asarray(fig.axes).reshape(3, T)[0]] == [f"bin {t}" for t in range(T)]
    plt.close(fig)


def test_event_animation_has_one_frame_per_time_bin(event_pair, tmp_path):
    clean, adv = event_pair
    path = tmp_path / "events.gif"
    assert event_animation(clean, adv, path, attack="flip-random", budget=9) == T
    assert path.stat().st_size > 0 and Image.open(path).n_frames == T


def test_every_other_figure_takes_event_traces(event_model, event_pair, frames, tmp_path):
    clean, adv = event_pair
    assert clean.events and clean.x.shape == (1, T, 2, 34, 34)
    fig = input_figure(clean, adv, static=True)  # direct encoding: event models ignore the image-current view
    assert len(fig.axes) == 2 and "L0 = 6" in fig.axes[0].get_title() and fig.axes[1].get_xlabel() == "time bin"
    expected = [(conv_maps_figure(clean, adv, timestep=T - 1), 3), (fc_raster_figure(clean, adv), 2), (output_figure(clean, adv), 2),
                (layer_activity_figure(clean, adv, threshold=0.5), 2)]
    for f, n in [(fig, 2)] + expected:
        assert len(f.axes) == n, f.axes[0].get_title()
        plt.close(f)
    assert spike_animation(clean, adv, tmp_path / "s.gif") == T and Image.open(tmp_path / "s.gif").n_frames == T
    rows = layer_distances(clean, adv)
    assert [r["layer"] for r in rows] == clean.rec.names and rows[0]["differing_fraction"] > 0
    x, xa = frames
    f = tsne_figure(event_model, torch.stack([x, 1 - x, x.flip(-1)]), torch.stack([xa, 1 - xa, xa.flip(-1)]), torch.tensor([0, 1, 2]))
    assert len(f.axes) == 1
    plt.close(f)
    with pytest.raises(ValueError, match="events_figure"):
        images_figure(clean, adv)
    image = build_model("fcsnn", hidden=[8], num_steps=2).eval()
    a = trace(image, torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match="images_figure"):
        events_figure(a, a)


def test_render_all_writes_the_event_figures(event_model, tmp_path, monkeypatch):
    from robust_snn.data import load_split

    monkeypatch.setenv("ROBUST_SNN_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "no-nmnist"  # no N-MNIST files: the synthetic test split, simulated from MNIST
    data.mkdir()
    x, y = load_split("nmnist", "test", data_dir=data, num_steps=T, limit=20)
    with torch.no_grad():
        right = torch.nonzero(event_model(x).argmax(1) == y).flatten()
    index = int(right[0]) if len(right) else 0
    out = tmp_path / "v"
    s = render_all(event_model, index=index, budget=12, out=out, tsne_samples=4, data_dir=str(data))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["1_events.png", "2_input.png", f"3_conv_maps_t{s['timestep']}.png", "4_fc_raster.png", "5_output.png",
                     "6_activity.png", "7_animation.gif", "8_tsne.png", "summary.json"]
    assert all((out / n).stat().st_size > 0 for n in names) and Image.open(out / "7_animation.gif").n_frames == T == s["frames"]
    assert s["attack"] == "flip-greedy" and s["norm"] == "L0" and s["budget"] == 12 and s["label"] == int(y[index])
    assert s["l0"] == s["events_added"] + s["events_removed"] <= 12
    assert json.loads((out / "summary.json").read_text())["l0"] == s["l0"]
    if len(right):
        assert s["l0"] > 0  # greedy flips keep lowering the margin even where they do not break the sample
    gif_only = render_all(event_model, index=index, attack="flip-random", budget=5, out=tmp_path / "g", fmt="gif", tsne_samples=0,
                          data_dir=str(data))
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["7_animation.gif", "summary.json"] and gif_only["l0"] <= 5


@pytest.mark.parametrize("kind,kwargs,msg", [
    ("events", {"eps": 0.1}, "its budget is a number of flipped events (--budget), not --eps"),
    ("events", {"attack": "pgd"}, "pgd is an image attack, but this model takes event tensors; use an event attack"),
    ("events", {"budget": -1}, "--budget must be a whole number of flipped events >= 0, got -1"),
    ("events", {"budget": 2.5}, "--budget must be a whole number"),
    ("events", {"steps": 5}, "--steps is not used by flip-greedy"),
    ("image", {"budget": 10}, "this model takes images: --budget sets the event budget of event models; use --eps"),
    ("image", {"attack": "flip-greedy"}, "flip-greedy is an event attack, but this model takes images; use an image attack"),
])
def test_render_all_refuses_options_of_the_other_input_kind(event_model, tmp_path, kind, kwargs, msg):
    model = event_model if kind == "events" else build_model("fcsnn", hidden=[8], num_steps=2).eval()
    with pytest.raises(RobustSNNError) as err:
        render_all(model, out=tmp_path, tsne_samples=0, **kwargs)
    assert msg in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # refused before anything is loaded or written


def test_visualize_cli_on_an_event_checkpoint_within_the_budget(scnn_checkpoint, synthetic_nmnist, tmp_path):
    import json

    from click.testing import CliRunner

    from robust_snn.cli import main

    out = tmp_path / "figs"
    res = CliRunner().invoke(main, ["visualize", "--checkpoint", str(scnn_checkpoint), "--data-dir", str(synthetic_nmnist),
                                    "--budget", "20", "--tsne-samples", "0", "--out", str(out), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["norm"] == "L0" and summary["budget"] == 20 and summary["attack"] == "flip-greedy"
    assert 0 <= summary["l0"] <= 20 and summary["l0"] == summary["events_added"] + summary["events_removed"]
    assert (out / "1_events.png").stat().st_size > 0 and list(out.glob("*.gif"))
    refused = CliRunner().invoke(main, ["visualize", "--checkpoint", str(scnn_checkpoint), "--data-dir", str(synthetic_nmnist),
                                        "--eps", "0.1", "--out", str(tmp_path / "x")])
    assert refused.exit_code != 0 and "--budget" in refused.output and "Traceback" not in refused.output
