"""A long evaluation survives being stopped: the journal of finished chunks (``attack --journal``)."""
import json
import logging
import warnings

import pytest
import torch
from click.testing import CliRunner

from robust_snn.attacks import evaluate
from robust_snn.attacks.checks import RobustnessWarning
from robust_snn.attacks.journal import Journal
from robust_snn.cli import main
from robust_snn.errors import RobustSNNError

# the validation suite (APGD-CE through three gradients, a cascade) on 48 images in chunks of 16: 3 stages x 3 chunks
SETTINGS = dict(suite="validation", eps=[0.1, 0.2], steps=3, batch_size=16, seed=5)


def _run(model, x, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        return evaluate(model, x, y, **{**SETTINGS, **kw})


def _same(a, b):
    """Every number and every per-sample verdict equal."""
    keys = ("attack", "eps", "robust_accuracy", "attacked", "broken", "linf_max", "l2_mean")
    assert [{k: r[k] for k in keys} for r in a["results"]] == [{k: r[k] for k in keys} for r in b["results"]]
    assert a["worst_case"] == b["worst_case"]
    assert a["worst_case_masks"].keys() == b["worst_case_masks"].keys()
    for k in a["worst_case_masks"]:
        assert torch.equal(a["worst_case_masks"][k], b["worst_case_masks"][k])


@pytest.fixture(scope="module")
def batch(eval_batch):
    return eval_batch[0][:48], eval_batch[1][:48]


@pytest.fixture(scope="module")
def uninterrupted(batch, tiny_checkpoint):
    from robust_snn import load_model

    return _run(load_model(tiny_checkpoint), *batch)


def test_an_interrupted_run_resumes_with_the_numbers_of_an_uninterrupted_one(tiny_model, batch, uninterrupted, tmp_path,
                                                                             monkeypatch, caplog):
    assert uninterrupted["worst_case"][1]["robust_accuracy"] < uninterrupted["clean_accuracy"]  # the attacks do break some
    real = Journal.save
    saved = {"n": 0}

    def killed_at_the_fifth_chunk(self, key, **tensors):
        if saved["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C (or the machine going away) in the middle of a chunk
        saved["n"] += 1
        real(self, key, **tensors)

    monkeypatch.setattr(Journal, "save", killed_at_the_fifth_chunk)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model, *batch, journal=tmp_path / "j")
    monkeypatch.setattr(Journal, "save", real)
    resumed = _run(tiny_model, *batch, journal=tmp_path / "j")
    _same(uninterrupted, resumed)
    total = resumed["journal"]["reused_chunks"] + resumed["journal"]["written_chunks"]
    assert resumed["journal"]["reused_chunks"] == 4 and total > 4
    with caplog.at_level(logging.INFO, logger="robust_snn.attacks.evaluate"):
        again = _run(tiny_model, *batch, journal=tmp_path / "j")  # everything recorded: nothing is attacked again
    lines = [r.getMessage() for r in caplog.records if "robust accuracy" in r.getMessage()]
    assert len(lines) == len(again["results"]) and all("chunks from the journal" in line for line in lines)
    assert sum(int(line.split(", ")[-1].split(" of ")[0]) for line in lines) == total  # the stage lines say what was reused
    assert again["journal"] == {**resumed["journal"], "reused_chunks": total, "written_chunks": 0}
    _same(uninterrupted, again)
    assert not list((tmp_path / "j").rglob("*.tmp"))  # the stopped write left nothing half-written behind
    rows = [len(torch.load(f, weights_only=True)["rows"]) for f in (tmp_path / "j").rglob("chunks/*.pt")]
    assert len(rows) == total and max(rows) <= 16 and min(rows) < 16  # later stages record their survivors only


def test_entries_are_never_used_for_another_evaluation(tiny_model, batch, uninterrupted, tmp_path):
    first = _run(tiny_model, *batch, journal=tmp_path)
    _same(uninterrupted, first)
    other_seed = _run(tiny_model, *batch, journal=tmp_path, seed=6)
    assert other_seed["journal"]["reused_chunks"] == 0 and other_seed["journal"]["dir"] != first["journal"]["dir"]
    fewer_steps = _run(tiny_model, *batch, journal=tmp_path, steps=2)  # the same run folder, other attack settings
    assert fewer_steps["journal"]["reused_chunks"] == 0 and fewer_steps["journal"]["dir"] == first["journal"]["dir"]
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1e-3)  # other weights
    retrained = _run(tiny_model, *batch, journal=tmp_path)
    assert retrained["journal"]["reused_chunks"] == 0 and retrained["journal"]["dir"] != first["journal"]["dir"]
    manifest = json.loads((tmp_path / first["journal"]["dir"].split("/")[-1] / "run.json").read_text())
    assert manifest["seed"] == 5


def test_a_run_on_more_images_reuses_the_chunks_of_a_shorter_one(tiny_checkpoint, batch, uninterrupted, tmp_path):
    from robust_snn import load_model

    model = load_model(tiny_checkpoint)
    x, y = batch
    shorter = _run(model, x[:40], y[:40], journal=tmp_path)  # chunks [0, 16), [16, 32), [32, 40)
    full = _run(model, x, y, journal=tmp_path)
    assert full["journal"]["dir"] == shorter["journal"]["dir"]
    reused, written = full["journal"]["reused_chunks"], full["journal"]["written_chunks"]
    # the two whole chunks of every stage and budget were reused (fewer when a chunk had no survivor left to attack): at
    # least those of the first stage at both budgets; the third chunk holds other images now and is attacked again
    assert 2 * len(SETTINGS["eps"]) <= reused <= 2 * len(full["results"]) and written >= len(SETTINGS["eps"])
    _same(uninterrupted, full)


@pytest.fixture(scope="module")
def rate_model(tmp_path_factory, data_dir):
    """A tiny rate-coded (stochastic) CSNN: EOT over encoder draws, judged on averaged draws."""
    from robust_snn import load_model
    from robust_snn.training import TrainSettings, train

    out = tmp_path_factory.mktemp("rate") / "rate.pt"
    settings = TrainSettings(epochs=2, batch_size=50, lr=5e-3, limit=1500, val_split=0.0, test_limit=100, seed=0)
    train({"arch": "csnn", "channels": [4, 8], "hidden": [32], "num_steps": 6, "encoding": "rate", "threshold": 0.3},
          settings, out=out, data_dir=str(data_dir), device="cpu", progress=False)
    return load_model(out)


def test_a_stochastic_model_resumes_with_the_same_draws(rate_model, batch, tmp_path, monkeypatch):
    x, y = batch
    kw = dict(eot_samples=2, samples=2, eps=[0.15])
    plain = _run(rate_model, x, y, **kw)
    assert plain["stochastic"] and plain["worst_case"][0]["robust_accuracy"] < plain["clean_accuracy"]
    real = Journal.save
    saved = {"n": 0}

    def killed(self, key, **tensors):
        if saved["n"] == 2:
            raise KeyboardInterrupt
        saved["n"] += 1
        real(self, key, **tensors)

    monkeypatch.setattr(Journal, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(rate_model, x, y, journal=tmp_path, **kw)
    monkeypatch.setattr(Journal, "save", real)
    resumed = _run(rate_model, x, y, journal=tmp_path, **kw)
    assert resumed["journal"]["reused_chunks"] == 2 and resumed["journal"]["written_chunks"] > 0
    _same(plain, resumed)


@pytest.mark.parametrize("change", ["defense", "draws", "fast paths", "fast paths behind a defense", "graphs"])
def test_settings_that_change_the_results_never_share_entries(change, tiny_model, rate_model, batch, tmp_path):
    """Quantization with 4 bits or 2 (settings outside the weights); 1 EOT draw and 16 judging draws or 11 and 6; the
    fused LIF and channels-last paths on or off, the graph wrapper or none (the same weights, other rounding)."""
    import copy

    from robust_snn.defenses.registry import build_defended

    x, y = batch
    if change == "defense":
        runs = [dict(model=build_defended(tiny_model, [f"quantize:bits={b}"], None)) for b in (4, 2)]
    elif change == "draws":
        runs = [dict(model=rate_model, eot_samples=1, samples=16), dict(model=rate_model, eot_samples=11, samples=6)]
    elif change == "fast paths":
        runs = [dict(model=tiny_model), dict(model=copy.deepcopy(tiny_model).set_fast(False))]
    elif change == "fast paths behind a defense":
        runs = [dict(model=build_defended(m, ["quantize:bits=4"], None))
                for m in (tiny_model, copy.deepcopy(tiny_model).set_fast(False))]
    else:
        runs = [dict(model=tiny_model), dict(model=tiny_model, graphs="eager")]
    first, second = (_run(r.pop("model"), x, y, journal=tmp_path, eps=[0.15], **r) for r in runs)
    assert first["journal"]["written_chunks"] > 0
    assert second["journal"]["reused_chunks"] == 0 and second["journal"]["dir"] != first["journal"]["dir"]


def test_a_damaged_entry_is_attacked_again(tiny_model, batch, uninterrupted, tmp_path, caplog):
    first = _run(tiny_model, *batch, journal=tmp_path)
    entries = sorted((tmp_path / first["journal"]["dir"].split("/")[-1] / "chunks").glob("*.pt"))
    assert len(entries) == first["journal"]["written_chunks"] > 1
    entries[0].write_bytes(b"not a tensor file")
    second = _run(tiny_model, *batch, journal=tmp_path)
    assert second["journal"]["written_chunks"] == 1 and second["journal"]["reused_chunks"] == len(entries) - 1
    assert "unreadable" in caplog.text
    _same(uninterrupted, second)
    # an entry that loads but does not hold this chunk's tensors (e.g. written by another version): attacked again
    torch.save({"key": "something else", "x_adv": torch.zeros(1)}, entries[1])
    third = _run(tiny_model, *batch, journal=tmp_path)
    assert third["journal"]["written_chunks"] == 1 and "does not hold this chunk's results" in caplog.text
    _same(uninterrupted, third)


def test_a_failed_write_stops_the_run_in_one_line(tiny_checkpoint, tmp_path, monkeypatch):
    """A full disk: torch.save's C++ writer raises RuntimeError, not OSError; still one line naming the fix."""
    import robust_snn.attacks.journal as journal

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0")

    monkeypatch.setattr(journal.torch, "save", full_disk)
    res = CliRunner().invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--suite", "validation", "--eps", "0.1",
                                    "--steps", "2", "--limit", "16", "--journal", str(tmp_path / "j")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "cannot record a finished batch" in res.output and "run the same command again" in res.output
    assert not list((tmp_path / "j").rglob("*.tmp"))


def test_cli_journal_skips_finished_batches_and_refuses_a_file(tiny_checkpoint, tmp_path):
    args = ["attack", "--checkpoint", str(tiny_checkpoint), "--suite", "validation", "--eps", "0.1", "--steps", "2",
            "--limit", "32", "--batch-size", "16", "--journal", str(tmp_path / "j")]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "journal: 0 finished batches reused, " in first.output
    second = CliRunner().invoke(main, args + ["--json"])
    assert second.exit_code == 0, second.output
    out = json.loads(second.output)
    assert out["journal"]["written_chunks"] == 0 and out["journal"]["reused_chunks"] > 0
    plain = CliRunner().invoke(main, [a for a in args if a not in ("--journal", str(tmp_path / "j"))] + ["--json"])
    assert plain.exit_code == 0, plain.output
    plain = json.loads(plain.output)
    timing = {"seconds", "img_per_s", "clean_seconds", "command", "journal"}

    def strip(o):
        return {k: strip(v) for k, v in o.items() if k not in timing} if isinstance(o, dict) else \
            [strip(v) for v in o] if isinstance(o, list) else o

    assert strip(out) == strip(plain)  # every number of the run that attacked nothing equals a run without a journal
    (tmp_path / "file").write_text("mine")
    bad = CliRunner().invoke(main, args[:-1] + [str(tmp_path / "file")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output  # click's usage error, as for --out
    assert "Error: Invalid value for '--journal'" in bad.output and "is a file" in bad.output
    assert (tmp_path / "file").read_text() == "mine"
    with pytest.raises(RobustSNNError, match="--journal .* is a file, not a folder; choose a folder"):  # the library says so too
        Journal(tmp_path / "file", "0" * 64)
