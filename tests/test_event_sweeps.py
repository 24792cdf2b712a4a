"""Sweeps over event models: event budget grids (L0 / add-only), event attacks and defenses, their tables, report and plots."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robust_snn.cli import main
from robust_snn.errors import RobustSNNError
from robust_snn.experiments import load_spec
from robust_snn.experiments.results import (COLUMNS, WORST_COLUMNS, columns_for, pack_mask, read_rows, rows_from_csv, worst_case_rows,
                                            write_tables)
from robust_snn.experiments.runner import cells, run_sweep

REPO = Path(__file__).resolve().parent.parent
#: the shipped event checkpoint: the spec only reads its config (no model is built, nothing is attacked)
EV = REPO / "checkpoints" / "scnn-nmnist.pt"
MODEL_EV = f'[[models]]\nname = "ev"\ncheckpoint = "{EV}"\n'
MODEL_IMG = '[[models]]\nname = "img"\ncheckpoint = "default"\n'
EVENT_NAMES = "pga, pga-prob, sda, spikefool, flip-greedy, flip-random"


def _write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _event_spec(tmp_path, checkpoint, *, budget="[0, 10]", attacks="", defenses="", extra="", limit=12, name="ev"):
    return _write(tmp_path, f'name = "{name}"\nbudget = {budget}\n{extra}\n[data]\nlimit = {limit}\n[run]\nbatch_size = 64\n'
                            f'device = "cpu"\n[[models]]\nname = "ev"\ncheckpoint = "{checkpoint}"\n{defenses}{attacks}')


CHEAP = '[[attacks]]\nname = "flip-greedy"\n[[attacks]]\nname = "flip-random"\n'


# -- the spec: what is refused, in one line each ---------------------------------------------------

@pytest.mark.parametrize("text,msg", [
    (MODEL_EV + '[[attacks]]\nname = "pgd"\n', ("attacks[0] (pgd): an image attack (L-inf eps), but every model takes event tensors: "
                                                f'use the events suite (name = "events") or event attacks ({EVENT_NAMES})')),
    (MODEL_EV + '[[attacks]]\nname = "standard"\n', "attacks[0] (standard): an image attack (L-inf eps), but every model takes event"),
    ('[[attacks]]\nattack = "sda:steps=5"\n', ("attacks[0] (sda:steps=5): an event attack (L0 event budgets), but no model takes event "
                                              "tensors: use an image attack or suite (standard) for image models")),
    ('[[attacks]]\nname = "events"\n', "attacks[0] (events): an event attack (L0 event budgets), but no model takes event tensors"),
    ('budget = [0, 10]\n[[attacks]]\nname = "pgd"\n', ("budget sets event budgets (flipped events), but no model takes event tensors: "
                                                       "give the L-inf budgets of image models with eps = [...]")),
    ('threat = "add-only"\n[[attacks]]\nname = "pgd"\n', ("threat sets the threat model of event attacks, but no model takes event "
                                                          "tensors: leave threat out")),
    ('eps = [0.0, 0.1]\n' + MODEL_EV, ("eps sets L-inf budgets of image models, but every model takes event tensors: give event budgets "
                                       "(flipped events) with budget = [...]")),
    ('budget = [0, 2.5]\n' + MODEL_EV, "budget: 2.5 is not a whole number of events >= 0"),
    ('budget = [-10]\n' + MODEL_EV, "budget: -10 is not a whole number of events >= 0"),
    ('budget = []\n' + MODEL_EV, "budget must be a non-empty list of event budgets"),
    ('threat = "l2"\n' + MODEL_EV, "threat must be one of l0, add-only (the threat model of the event attacks), got 'l2'"),
    ('[[defenses]]\nname = "dn"\npreprocessors = ["denoise:window=1"]\n[[attacks]]\nname = "pgd"\n',
     "defenses[0] (dn): denoise filters event tensors, but no model takes event tensors: use an image defense"),
    (MODEL_EV + '[[defenses]]\nname = "b"\npreprocessors = ["blur:sigma=1.0"]\n',
     "defenses[0] (b): blur filters images, but every model takes event tensors: use denoise[:window=W]"),
    (MODEL_EV + '[[defenses]]\nname = "t"\ndetector = "tcc:fpr=0.05"\n',
     "defenses[0] (t): the tcc detector watches image models, but every model takes event tensors: use denoise"),
    (MODEL_EV + '[[defenses]]\nname = "mix"\npreprocessors = ["blur", "denoise"]\n',
     "defenses[0] (mix): blur filters images and denoise event tensors; no model takes both: make them two defenses"),
    (MODEL_EV + '[[attacks]]\nname = "sda"\neps = [0.1]\n',
     "attacks[0] (sda): an event attack takes its own grid as budget = [...] (flipped events), not eps"),
    ('[[attacks]]\nname = "pgd"\nbudget = [10]\n', "attacks[0] (pgd): an image attack takes its own grid as eps = [...], not budget"),
    (MODEL_EV + '[[attacks]]\nname = "events"\nbudget = [1.5]\n', "attacks[0].budget: 1.5 is not a whole number of events >= 0"),
    (MODEL_IMG + MODEL_EV + '[[attacks]]\nname = "pgd"\n', ("models[1] (ev): takes event tensors, but no attack is an event attack: "
                                                           f'add the events suite ([[attacks]] name = "events") or an event attack ({EVENT_NAMES})')),
    (MODEL_IMG + MODEL_EV + '[[defenses]]\nname = "b"\npreprocessors = ["blur"]\n',
     'models[1] (ev): no defense fits this event model: add [[defenses]] name = "none"'),
    ('[data]\ndataset = "mnist"\n' + MODEL_EV, "[data] dataset = 'mnist' holds images, but ev takes event tensors: leave dataset out"),
])
def test_event_spec_mismatches_are_refused_in_one_line(tmp_path, text, msg):
    with pytest.raises(RobustSNNError, match="invalid experiment spec") as e:
        load_spec(_write(tmp_path, text))
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


def test_a_refused_event_spec_is_one_line_at_the_cli(tmp_path):
    res = CliRunner().invoke(main, ["sweep", str(_write(tmp_path, MODEL_EV + '[[attacks]]\nname = "pgd"\n'))])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and "every model takes event tensors" in res.output


def test_each_kind_of_model_gets_its_grid_attacks_and_defenses(tmp_path):
    text = ('eps = [0.0, 0.1]\nbudget = [0, 10, 50]\nthreat = "Add-Only"\n' + MODEL_IMG + MODEL_EV
            + '[[defenses]]\nname = "none"\n[[defenses]]\nname = "blur"\npreprocessors = ["blur"]\n'
            + '[[defenses]]\nname = "denoise"\npreprocessors = ["denoise:window=2"]\n')
    spec = load_spec(_write(tmp_path, text))
    assert spec.threat == "add-only" and spec.budget == [0.0, 10.0, 50.0]
    assert [(m.name, m.events) for m in spec.models] == [("img", False), ("ev", True)]
    # no [[attacks]]: each kind's default suite, as `robust-snn attack` picks it
    assert [(a.name, a.events) for a in spec.attacks] == [("standard", False), ("events", True)]
    cs = cells(spec)
    img = [c for c in cs if c["model"].name == "img"]
    ev = [c for c in cs if c["model"].name == "ev"]
    assert [(c["defense"].name, c["attack"].name, c["eps"]) for c in img] == [
        ("none", "standard", 0.0), ("none", "standard", 0.1), ("blur", "standard", 0.0), ("blur", "standard", 0.1)]
    assert [(c["defense"].name, c["attack"].name, c["eps"]) for c in ev] == [
        ("none", "events", e) for e in (0.0, 10.0, 50.0)] + [("denoise", "events", e) for e in (0.0, 10.0, 50.0)]
    assert {c["norm"] for c in img} == {"Linf"} and {c["norm"] for c in ev} == {"add-only"}
    assert img[1]["key"] == "img|none|standard|steps=None,queries=None,restarts=1|model|0.1|model|0"  # image keys as before
    assert ev[1]["key"] == "ev|none|events|steps=None,queries=None,restarts=1|model|add-only:10|model|0"


def test_per_attack_budget_overrides_the_grid(tmp_path):
    spec = load_spec(_event_spec(tmp_path, EV, budget="[0, 10]", attacks=CHEAP + 'budget = [0, 5, 20]\n'))
    assert [(c["attack"].name, c["eps"]) for c in cells(spec)] == [
        ("flip-greedy", 0.0), ("flip-greedy", 10.0), ("flip-random", 0.0), ("flip-random", 5.0), ("flip-random", 20.0)]


def test_shipped_event_sweep_is_the_documented_grid():
    spec = load_spec(REPO / "experiments" / "nmnist-budget.toml")
    assert spec.limit == 100 and spec.threat == "L0" and [m.events for m in spec.models] == [True]
    cs = cells(spec)
    assert [(c["defense"].name, c["attack"].name, c["eps"]) for c in cs] == [
        (d, "events", float(b)) for d in ("none", "denoise") for b in (0, 10, 50, 100, 200)]
    assert {c["norm"] for c in cs} == {"L0"}


# -- tables: hand-made rows ------------------------------------------------------------------------

def _row(attack, mask, *, norm="L0", eps=10.0, l0=None):
    n = len(mask)
    row = {"model": "m", "defense": "none", "detector": "", "adaptive": True, "attack": attack, "attack_kind": attack, "surrogate": "model",
           "norm": norm, "eps": eps, "num_steps": 8, "seed": 0, "n": n, "clean_accuracy": 1.0, "robust_accuracy": float(np.mean(mask)),
           "ci_low": 0.0, "ci_high": 1.0, "within_bound": True, "seconds": 1.0, "key": f"{attack}|{norm}|{eps:g}",
           "robust_mask": pack_mask(torch.tensor(mask))}
    if l0 is not None:
        row["l0_broken"] = l0
    return row


def test_worst_case_l0_is_the_smallest_example_per_sample():
    a = _row("a", [False, True, False, True, False], l0=[3, -1, 7, -1, 9])
    b = _row("b", [False, False, True, True, False], l0=[5, 2, -1, -1, 4])
    (w,) = worst_case_rows([a, b])
    assert w["norm"] == "L0" and w["robust_accuracy"] == pytest.approx(0.2)
    # per sample: min(3, 5), 2, 7, -, min(9, 4) -> 2, 3, 4, 7: the lower middle value, as torch.median (and evaluate) take it
    assert (w["l0_median"], w["l0_max"]) == (3.0, 7)
    assert w["l0_median"] == torch.tensor([3.0, 2.0, 7.0, 4.0]).median().item()


def test_image_tables_keep_their_columns_and_event_tables_add_norm_and_l0(tmp_path):
    image = [_row("pgd", [True, False], norm="Linf", eps=0.1)]
    del image[0]["norm"]  # a row written before sweeps took event models
    write_tables(tmp_path, image)
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert (tmp_path / "worst_case.csv").read_text().splitlines()[0] == ",".join(WORST_COLUMNS)
    assert rows_from_csv(tmp_path / "results.csv")[0]["norm"] == "Linf"
    mixed = image + [_row("sda", [True, False], l0=[-1, 6])]
    cols = columns_for(mixed, COLUMNS)
    assert cols[cols.index("eps") - 1] == "norm" and cols[cols.index("ci_high") + 1:cols.index("ci_high") + 3] == ["l0_median", "l0_max"]
    write_tables(tmp_path, mixed)
    back = rows_from_csv(tmp_path / "results.csv")
    assert [(r["norm"], r["eps"], r["l0_max"]) for r in back] == [("Linf", 0.1, None), ("L0", 10.0, None)]
    with open(tmp_path / "worst_case.csv", newline="") as f:
        worst = list(csv.DictReader(f))
    assert [(w["norm"], w["l0_median"], w["l0_max"]) for w in worst] == [("Linf", "", ""), ("L0", "6.0", "6")]


# -- end to end ------------------------------------------------------------------------------------

def test_event_sweep_end_to_end(scnn_checkpoint, synthetic_nmnist, tmp_path):
    from robust_snn import load_model
    from robust_snn.attacks import evaluate
    from robust_snn.data import load_split
    from robust_snn.experiments.plots import accuracy_vs_eps_figure
    from robust_snn.experiments.results import unpack_mask

    spec = _event_spec(tmp_path, scnn_checkpoint, attacks=CHEAP)
    out = tmp_path / "out"
    args = ["sweep", str(spec), "--out", str(out), "--data-dir", str(synthetic_nmnist), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["complete"] and summary["cells"] == 4
    for f in ("results.jsonl", "results.csv", "worst_case.csv", "accuracy_vs_budget.png", "accuracy_vs_budget.svg", "report.md", "spec.toml"):
        assert (out / f).stat().st_size > 0, f
    assert not (out / "accuracy_vs_eps.png").exists()  # no image model, no eps figure
    rows = read_rows(out / "results.jsonl")
    assert [(r["attack"], r["norm"], r["eps"]) for r in rows] == [
        ("flip-greedy", "L0", 0.0), ("flip-greedy", "L0", 10.0), ("flip-random", "L0", 0.0), ("flip-random", "L0", 10.0)]
    assert rows[1]["key"].endswith("|model|L0:10|model|0") and all(r["n"] == 12 for r in rows)
    for r in rows:
        assert r["within_bound"] and len(r["l0_broken"]) == 12
        if r["eps"] == 0:
            assert r["robust_accuracy"] == pytest.approx(r["clean_accuracy"]) and r["l0_max"] is None  # budget 0 changes nothing
        else:
            assert all(v <= 10 for v in r["l0_broken"]) and (r["l0_max"] is None or r["l0_max"] <= 10)
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == columns_for(rows, COLUMNS) and {t["norm"] for t in table} == {"L0"}
    with open(out / "worst_case.csv", newline="") as f:
        worst = list(csv.DictReader(f))
    assert list(worst[0]) == columns_for(rows, WORST_COLUMNS) and [(w["norm"], float(w["eps"])) for w in worst] == [("L0", 0), ("L0", 10)]

    # the worst case over both cells at budget 10 is what evaluate gives with both attacks on the same data
    model = load_model(scnn_checkpoint)
    x, y = load_split("nmnist", "test", num_steps=model.num_steps, limit=12, data_dir=str(synthetic_nmnist))
    direct = evaluate(model, x, y, attacks=["flip-greedy", "flip-random"], eps_l0=[10], batch_size=64, seed=0, checks=False)
    w = direct.worst(10, "L0")
    assert float(worst[1]["robust_accuracy"]) < float(worst[0]["robust_accuracy"]) and worst[1]["l0_max"] != ""  # something broke
    assert float(worst[1]["robust_accuracy"]) == pytest.approx(w["robust_accuracy"])
    assert (worst[1]["l0_median"], worst[1]["l0_max"]) == (
        (f"{w['l0_median']}", f"{w['l0_max']}") if "l0_median" in w else ("", ""))
    masks = [unpack_mask(r["robust_mask"], 12) for r in rows if r["eps"] == 10]
    assert ((masks[0] & masks[1]) == direct.worst_mask(10, "L0").numpy()).all()
    assert [r["robust_accuracy"] for r in rows if r["eps"] == 10] == [direct.row(a, 10)["robust_accuracy"] for a in ("flip-greedy", "flip-random")]

    report = (out / "report.md").read_text()
    assert "## Worst case over event attacks (per sample)" in report and "## All event cells" in report
    assert "## Worst case over attacks (per sample)" not in report and "| L0 | 10 | 12 |" in report
    assert "Event data: nmnist: N-MNIST test files under" in report and "![accuracy_vs_budget.png]" in report
    fig = accuracy_vs_eps_figure(rows)
    assert fig.axes[0].get_xlabel() == "event budget (flipped events)"
    # resumable; the plot command reads the event CSV back
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and json.loads(again.output)["new"] == 0
    (out / "results.jsonl").rename(tmp_path / "moved.jsonl")
    res = CliRunner().invoke(main, ["plot", str(out / "results.csv"), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "plots" / "accuracy_vs_budget.png").stat().st_size > 0
    assert not (tmp_path / "plots" / "accuracy_vs_eps.png").exists()


def test_add_only_sweep_through_denoise(scnn_checkpoint, synthetic_nmnist, tmp_path):
    from robust_snn import load_model
    from robust_snn.attacks import evaluate
    from robust_snn.data import load_split
    from robust_snn.defenses.registry import build_defended

    defenses = '[[defenses]]\nname = "none"\n[[defenses]]\nname = "denoise"\npreprocessors = ["denoise:window=1"]\n'
    spec = load_spec(_event_spec(tmp_path, scnn_checkpoint, budget="[6]", extra='threat = "add-only"',
                                 attacks='[[attacks]]\nname = "flip-greedy"\n', defenses=defenses, limit=8))
    run_sweep(spec, tmp_path / "o", data_dir=str(synthetic_nmnist), progress=False, plots=False)
    rows = {r["defense"]: r for r in read_rows(tmp_path / "o" / "results.jsonl")}
    assert {r["norm"] for r in rows.values()} == {"add-only"} and rows["denoise"]["key"].endswith("|add-only:6|model|0")
    model = load_model(scnn_checkpoint)
    x, y = load_split("nmnist", "test", num_steps=model.num_steps, limit=8, data_dir=str(synthetic_nmnist))
    for name, target in (("none", model), ("denoise", build_defended(model, ["denoise:window=1"]))):
        direct = evaluate(target, x, y, attacks=["flip-greedy"], eps_l0=[6], threat="add-only", batch_size=64, seed=0, checks=False)
        assert rows[name]["robust_accuracy"] == pytest.approx(direct.worst(6, "add-only")["robust_accuracy"])
        assert rows[name]["check_rows"][0]["norm"] == "add-only"


def test_a_sweep_mixing_image_and_event_models(tiny_checkpoint, scnn_checkpoint, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_SNN_CACHE", str(tmp_path / "cache"))  # the synthetic N-MNIST split is generated here
    text = (f'name = "mixed"\neps = [0.0, 0.2]\nbudget = [0, 5]\n[data]\nlimit = 12\n[run]\nbatch_size = 64\ndevice = "cpu"\n'
            f'[[models]]\nname = "img"\ncheckpoint = "{tiny_checkpoint}"\n[[models]]\nname = "ev"\ncheckpoint = "{scnn_checkpoint}"\n'
            '[[attacks]]\nname = "fgsm"\n[[attacks]]\nname = "flip-greedy"\n')
    out = tmp_path / "o"
    summary = run_sweep(load_spec(_write(tmp_path, text)), out, data_dir=str(data_dir), progress=False)
    assert summary["complete"] and summary["cells"] == 4
    assert (out / "accuracy_vs_eps.png").is_file() and (out / "accuracy_vs_budget.png").is_file()  # one figure per kind
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(t["model"], t["attack"], t["norm"], float(t["eps"])) for t in table] == [
        ("img", "fgsm", "Linf", 0.0), ("img", "fgsm", "Linf", 0.2), ("ev", "flip-greedy", "L0", 0.0), ("ev", "flip-greedy", "L0", 5.0)]
    assert all(t["l0_max"] == "" for t in table if t["norm"] == "Linf")
    report = (out / "report.md").read_text()
    assert "## Worst case over attacks (per sample)" in report and "## Worst case over event attacks (per sample)" in report
    assert "synthetic N-MNIST" in report
