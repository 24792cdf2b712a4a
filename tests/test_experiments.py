"""Experiment sweeps: specs, the resumable runner (including SIGKILL), tables, plots and the report."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from robust_snn.cli import main
from robust_snn.errors import RobustSNNError
from robust_snn.experiments import load_spec, wilson_interval
from robust_snn.experiments.results import COLUMNS, WORST_COLUMNS, read_rows
from robust_snn.experiments.runner import cells, run_sweep
from robust_snn.experiments.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent


def _spec(tmp_path, checkpoint, *, eps="[0.0, 0.2]", attacks='[[attacks]]\nname = "pgd"\nsteps = 3\n', extra="", limit=48):
    p = tmp_path / "exp.toml"
    p.write_text(f'name = "tiny"\neps = {eps}\n{extra}\n[data]\nlimit = {limit}\n[run]\nbatch_size = 64\ndevice = "cpu"\n'
                 f'[[models]]\nname = "tiny"\ncheckpoint = "{checkpoint}"\n{attacks}')
    return p


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 10), (10, 10), (7, 10), (81, 100), (9905, 10000), (1, 3)]:
        lo, hi = wilson_interval(k, n)
        ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_sweep_cli_writes_documented_files(tiny_checkpoint, data_dir, tmp_path):
    spec = _spec(tmp_path, tiny_checkpoint)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--data-dir", str(data_dir), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["complete"] and summary["cells"] == 2 and summary["new"] == 2
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == COLUMNS and len(rows) == 2
    assert [float(r["eps"]) for r in rows] == [0.0, 0.2]
    r0, r1 = rows
    assert float(r0["robust_accuracy"]) == float(r0["clean_accuracy"])  # eps 0 changes nothing
    assert float(r1["robust_accuracy"]) < float(r1["clean_accuracy"])
    for r in rows:
        assert float(r["ci_low"]) <= float(r["robust_accuracy"]) <= float(r["ci_high"]) and int(r["n"]) == 48
    with open(out / "worst_case.csv", newline="") as f:
        worst = list(csv.DictReader(f))
    assert list(worst[0].keys()) == WORST_COLUMNS and len(worst) == 2
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("robust_mask" in json.loads(line) for line in lines)
    for f in ("accuracy_vs_eps.png", "accuracy_vs_eps.svg", "report.md", "spec.toml"):
        assert (out / f).stat().st_size > 0, f
    report = (out / "report.md").read_text()
    assert "Worst case over attacks" in report and "Sanity checks" in report and "torch" in report
    # plot from the CSV alone (the JSONL moved away)
    (out / "results.jsonl").rename(tmp_path / "moved.jsonl")
    res = CliRunner().invoke(main, ["plot", str(out / "results.csv"), "--out", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "plots" / "accuracy_vs_eps.png").stat().st_size > 0


def test_worst_case_is_per_sample(tiny_checkpoint, data_dir, tmp_path):
    spec = load_spec(_spec(tmp_path, tiny_checkpoint, eps="[0.15]", attacks='[[attacks]]\nname = "fgsm"\n[[attacks]]\nname = "pgd"\nsteps = 3\n'))
    summary = run_sweep(spec, tmp_path / "o", data_dir=str(data_dir), progress=False, plots=False)
    assert summary["complete"]
    rows = read_rows(tmp_path / "o" / "results.jsonl")
    from robust_snn.experiments.results import unpack_mask, worst_case_rows

    masks = [unpack_mask(r["robust_mask"], r["n"]) for r in rows]
    (w,) = worst_case_rows(rows)
    assert w["robust_accuracy"] == pytest.approx((masks[0] & masks[1]).mean())
    assert w["robust_accuracy"] <= min(r["robust_accuracy"] for r in rows)


def test_sweep_resumes_after_interruption_without_duplicates(tiny_checkpoint, data_dir, tmp_path):
    spec = load_spec(_spec(tmp_path, tiny_checkpoint, eps="[0.0, 0.1, 0.2]"))
    out = tmp_path / "o"
    first = run_sweep(spec, out, data_dir=str(data_dir), progress=False, max_cells=1, plots=False)
    assert first["done"] == 1 and not first["complete"]
    # a kill in the middle of writing a row leaves a torn line: it must be dropped, not duplicated
    with open(out / "results.jsonl", "a") as f:
        f.write('{"model": "tiny", "key": "torn')
    second = run_sweep(spec, out, data_dir=str(data_dir), progress=False, plots=False)
    assert second["complete"] and second["new"] == 2
    keys = [json.loads(line)["key"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(c["key"] for c in cells(spec)) and len(set(keys)) == 3
    third = run_sweep(spec, out, data_dir=str(data_dir), progress=False, plots=False)
    assert third["new"] == 0 and third["complete"]


def test_sweep_survives_sigkill(tiny_checkpoint, data_dir, tmp_path):
    spec = _spec(tmp_path, tiny_checkpoint, eps="[0.0, 0.05, 0.1, 0.15, 0.2, 0.25]",
                 attacks='[[attacks]]\nname = "pgd"\nsteps = 40\n', limit=200)
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robust_snn", "sweep", str(spec), "--out", str(out), "--quiet",
                             "--data-dir", str(data_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl = out / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if jsonl.is_file() and jsonl.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(read_rows(jsonl))
    assert 1 <= done_at_kill < 6
    res = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--data-dir", str(data_dir), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["complete"] and summary["new"] == 6 - done_at_kill
    rows = read_rows(jsonl)
    assert len(rows) == 6 == len((out / "results.jsonl").read_text().splitlines())
    with open(out / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6


def test_no_resume_moves_old_results_aside(tiny_checkpoint, data_dir, tmp_path):
    spec = load_spec(_spec(tmp_path, tiny_checkpoint, eps="[0.0]"))
    out = tmp_path / "o"
    run_sweep(spec, out, data_dir=str(data_dir), progress=False, plots=False)
    again = run_sweep(spec, out, resume=False, data_dir=str(data_dir), progress=False, plots=False)
    assert again["new"] == 1
    assert len(list(out.glob("results.jsonl.*.bak"))) == 1


@pytest.mark.parametrize("text,msg", [
    ('eps = [0.1, 1.5]\n[[attacks]]\nname = "pgd"', "eps: 1.5 is not a number in [0, 1]"),
    ('[[attacks]]\nname = "pgdd"', "unknown attack 'pgdd'"),
    ('[[models]]\ncheckpoint = "nope.pt"\n[[attacks]]\nname = "pgd"', "checkpoint 'nope.pt' not found"),
    ('models = []\n[[attacks]]\nname = "pgd"', "models is empty"),
    ('[[attacks]]\nname = "standard"\nrestarts = 2', "a suite takes no restarts"),
    ('colour = 1\n[[attacks]]\nname = "pgd"', "unknown key 'colour'"),
    ('[[attacks]]\nname = "cw"', "L2 attack"),
    ('[[defenses]]\nname = "b"\npreprocessors = ["blur:sigma=-1"]\n[[attacks]]\nname = "pgd"', "sigma"),
    ('[[attacks]]\nname = "pgd"\nsteps = 0', "steps must be a positive integer"),
    ('[data]\nlimit = -3\n[[attacks]]\nname = "pgd"', "limit must be a positive integer"),
])
def test_invalid_specs_give_clear_errors(tmp_path, text, msg):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(RobustSNNError, match="invalid experiment spec") as e:
        load_spec(p)
    assert msg in str(e.value)


def test_attacks_take_the_attack_spec_language(tiny_checkpoint, tiny_model, data_dir, tmp_path):
    """``attack = "pgd:steps=3,step_scale=2"`` in a sweep runs what ``robust-snn attack --attack pgd:steps=3,step_scale=2`` runs."""
    from robust_snn.attacks import evaluate
    from robust_snn.data import load_split

    attacks = '[[attacks]]\nattack = "PGD:steps=3,step_scale=2"\n[[attacks]]\nname = "pgd3"\nattack = "pgd"\nsteps = 3\n'
    spec = load_spec(_spec(tmp_path, tiny_checkpoint, eps="[0.2]", attacks=attacks))
    a = spec.attacks[0]
    assert (a.name, a.attack, a.kind, a.steps) == ("PGD:steps=3,step_scale=2", "PGD:steps=3,step_scale=2", "pgd", None)
    keys = [c["key"] for c in cells(spec)]
    assert keys[0].endswith("|steps=None,queries=None,restarts=1,spec=PGD:steps=3,step_scale=2|model|0.2|model|0")
    assert keys[1] == "tiny|none|pgd3|steps=3,queries=None,restarts=1|model|0.2|model|0"  # plain entries: keys as before
    run_sweep(spec, tmp_path / "o", data_dir=str(data_dir), progress=False, plots=False)
    rows = {r["attack"]: r for r in read_rows(tmp_path / "o" / "results.jsonl")}
    x, y = load_split("mnist", "test", data_dir=str(data_dir), limit=48)
    direct = evaluate(tiny_model, x, y, attacks=["pgd:steps=3,step_scale=2"], eps=[0.2], batch_size=64, seed=0, checks=False)
    row = rows["PGD:steps=3,step_scale=2"]
    assert row["attack_kind"] == "pgd" and row["check_rows"][0]["attack"] == "pgd:steps=3,step_scale=2"
    assert row["robust_accuracy"] == direct["worst_case"][0]["robust_accuracy"] < row["clean_accuracy"]


@pytest.mark.parametrize("attack", ["pgd:steps=0", "pgd:colour=1", "pgd:steps=2.5", "pgd:step_scale=nan", "pgd:random_start=maybe",
                                    "pgd:steps", "square:queries=-3"])
def test_attack_spec_errors_are_the_cli_errors(tmp_path, attack):
    from robust_snn.attacks.registry import parse_attack

    with pytest.raises(RobustSNNError) as cli:
        parse_attack(attack)  # what `robust-snn attack --attack ...` reports
    p = tmp_path / "bad.toml"
    p.write_text(f'[[attacks]]\nattack = "{attack}"\n')
    with pytest.raises(RobustSNNError) as sweep:
        load_spec(p)
    assert f"invalid experiment spec: attacks[0]: {cli.value}; attacks is empty" in str(sweep.value)


def test_attack_spec_of_an_l2_attack_is_refused_by_name(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[[attacks]]\nattack = "cw:steps=5"\n[[attacks]]\nattack = "pgdd:steps=5"\n[[attacks]]\nattack = 3\n')
    with pytest.raises(RobustSNNError) as e:
        load_spec(p)
    msg = str(e.value)
    assert "attacks[0]: sweeps use the L-inf eps grid; cw is an L2 attack" in msg
    assert "attacks[1]: unknown attack 'pgdd:steps=5'; choose an attack (fgsm, " in msg
    assert "attacks[2]: attack must be an attack name, an attack spec (name:key=value) or a suite, got 3" in msg


def test_invalid_spec_cli_and_bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("eps = [0.1,\n")
    res = CliRunner().invoke(main, ["sweep", str(p)])
    assert res.exit_code != 0 and "not valid TOML" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["sweep", str(tmp_path / "missing.toml")])
    assert res.exit_code != 0 and "not found" in res.output
    res = CliRunner().invoke(main, ["plot", str(tmp_path / "missing.csv")])
    assert res.exit_code != 0 and "not found" in res.output


def test_all_problems_reported_at_once():
    with pytest.raises(RobustSNNError) as e:
        parse_spec({"eps": [2.0], "attacks": [{"name": "nope"}], "seeds": [-1]})
    text = str(e.value)
    assert "eps" in text and "nope" in text and "seeds" in text


def test_shipped_experiment_specs_are_valid():
    for p in sorted((REPO / "experiments").glob("*.toml")):
        spec = load_spec(p)
        assert cells(spec), p


def test_changing_the_data_reruns_cells_instead_of_mixing(tiny_checkpoint, data_dir, tmp_path):
    out = tmp_path / "o"
    spec = load_spec(_spec(tmp_path, tiny_checkpoint, eps="[0.2]", limit=32))
    run_sweep(spec, out, data_dir=str(data_dir), progress=False, plots=False)
    bigger = load_spec(_spec(tmp_path, tiny_checkpoint, eps="[0.2]", limit=48))
    res = run_sweep(bigger, out, data_dir=str(data_dir), progress=False, plots=False)
    assert res["new"] == 1 and res["complete"]
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 1 and rows[0]["n"] == 48
    with open(out / "results.csv", newline="") as f:
        assert [int(r["n"]) for r in csv.DictReader(f)] == [48]


def test_detector_defense_rows_carry_rejection(tiny_checkpoint, data_dir, tmp_path):
    extra = '[[defenses]]\nname = "tcc"\ndetector = "tcc:fpr=0.1"\n'
    text = _spec(tmp_path, tiny_checkpoint, eps="[0.2]", limit=32).read_text()
    p = tmp_path / "det.toml"
    p.write_text(text.replace("[[models]]", extra + "[[models]]") + '[[attacks]]\nname = "pgd-tcc"\nsteps = 3\n')
    spec = load_spec(p)
    assert [c["attack"].name for c in cells(spec)] == ["pgd", "pgd-tcc"]  # pgd-tcc only where a detector is
    run_sweep(spec, tmp_path / "o", data_dir=str(data_dir), progress=False, plots=False)
    from robust_snn.experiments.results import unpack_mask, worst_case_rows

    rows = read_rows(tmp_path / "o" / "results.jsonl")
    for r in rows:
        robust, defended = unpack_mask(r["robust_mask"], r["n"]), unpack_mask(r["defended_mask"], r["n"])
        assert (defended | ~robust).all()  # correct implies defended
        assert defended.mean() == pytest.approx(r["robust_accuracy_with_rejection"])
    (w,) = worst_case_rows(rows)
    assert w["robust_accuracy_with_rejection"] >= w["robust_accuracy"]


def test_a_spec_without_attacks_runs_the_standard_suite(tmp_path):
    from robust_snn.experiments.spec import parse_spec

    spec = parse_spec({"name": "s", "eps": [0.1]})
    assert [(a.name, a.attack) for a in spec.attacks] == [("standard", "standard")]


def test_a_suite_is_one_cell_per_eps_holding_its_worst_case(tiny_checkpoint, data_dir, tmp_path, monkeypatch):
    from robust_snn import load_model
    from robust_snn.attacks import SUITES, Stage, Suite, evaluate
    from robust_snn.data import load_split
    from robust_snn.experiments.results import unpack_mask

    monkeypatch.setitem(SUITES, "cheap", Suite("cheap", (Stage("fgsm"), Stage("pgd", "fast_sigmoid:slope=5", steps=3),
                                                         Stage("square", queries=20)), cascade=True, claim=True, description="t"))
    spec = _spec(tmp_path, tiny_checkpoint, eps="[0.0, 0.15]", attacks='[[attacks]]\nname = "cheap"\n', limit=40)
    run_sweep(load_spec(spec), tmp_path / "o", data_dir=str(data_dir), progress=False, plots=False)
    rows = read_rows(tmp_path / "o" / "results.jsonl")
    assert [(r["attack"], r["eps"]) for r in rows] == [("cheap", 0.0), ("cheap", 0.15)]
    zero, cell = rows
    assert [c["attack"] for c in cell["check_rows"]] == ["fgsm", "pgd[fast_sigmoid:slope=5]", "square"]
    assert [c["attack"] for c in zero["check_rows"]] == ["fgsm"]  # a zero budget breaks nothing: only the first stage
    assert zero["robust_accuracy"] == pytest.approx(zero["clean_accuracy"])
    # the cell is the cascade's per-sample worst case, the same as the API's
    x, y = load_split("mnist", "test", data_dir=str(data_dir), limit=40)
    res = evaluate(load_model(str(tiny_checkpoint)), x, y, suite="cheap", eps=[0.15], batch_size=64, checks=False)
    assert (unpack_mask(cell["robust_mask"], 40) == res["worst_case_masks"]["Linf@0.15"].numpy()).all()
    assert cell["robust_accuracy"] == pytest.approx(res["worst_case"][0]["robust_accuracy"])
    assert cell["robust_accuracy"] < cell["clean_accuracy"]
