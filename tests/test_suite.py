"""The standard suite (a cascade), gradient bookkeeping, and the checks that cannot be fooled."""
import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from robust_snn.attacks import SUITES, Stage, Suite, evaluate, get_suite
from robust_snn.attacks.checks import RobustnessWarning, check_results
from robust_snn.cli import main
from robust_snn.errors import RobustSNNError


@pytest.fixture()
def calls(monkeypatch):
    """Record, per attack built, how many samples each call of it received."""
    import importlib

    ev = importlib.import_module("robust_snn.attacks.evaluate")  # the module, not the function of the same name
    seen = []
    real = ev.build_attack

    def counting(spec, model, eps, params, **kw):
        atk = real(spec, model, eps, params, **kw)
        entry = {"attack": spec.name, "eps": eps, "sizes": []}
        seen.append(entry)

        class Counted:
            def __call__(self, x, y):
                entry["sizes"].append(len(x))
                return atk(x, y)

        return Counted()

    monkeypatch.setattr(ev, "build_attack", counting)
    return seen


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RobustnessWarning)
        return fn(*args, **kwargs)


def test_cascade_attacks_only_survivors(tiny_model, eval_batch, calls, monkeypatch):
    x, y = eval_batch
    suite = Suite("two", (Stage("fgsm"), Stage("pgd", "fast_sigmoid:slope=5", steps=5)), cascade=True, claim=True, description="t")
    monkeypatch.setitem(SUITES, "two", suite)
    res = _quiet(evaluate, tiny_model, x, y, suite="two", eps=[0.1], checks=False, keep_examples=True)
    fgsm, pgd = res["results"]
    clean_ok = res["clean_predictions"] == y
    after_fgsm = clean_ok & (res["example_predictions"]["fgsm@0.1"] == y)
    assert sum(calls[0]["sizes"]) == int(clean_ok.sum())  # the first stage attacks every clean-correct sample
    assert sum(calls[1]["sizes"]) == int(after_fgsm.sum()) < int(clean_ok.sum())  # the second only FGSM's survivors
    assert fgsm["attacked"] == int(clean_ok.sum()) and pgd["attacked"] == int(after_fgsm.sum())
    # rows report the accuracy after each stage; the worst case is the last
    assert pgd["robust_accuracy"] <= fgsm["robust_accuracy"]
    assert res["worst_case"][0]["robust_accuracy"] == pytest.approx(pgd["robust_accuracy"])
    assert fgsm["broken"] + pgd["broken"] == int(clean_ok.sum()) - int(res["worst_case_masks"]["Linf@0.1"].sum())


def test_gradient_free_attacks_run_once_whatever_the_gradient_choices(tiny_model, eval_batch, calls):
    x, y = eval_batch
    res = _quiet(evaluate, tiny_model, x[:16], y[:16], attacks=["square"], eps=[0.1], queries=20, surrogate="ensemble", checks=False)
    assert len(calls) == 1 and len(calls[0]["sizes"]) == 1  # one run, not one per gradient choice
    assert res["results"][0]["surrogate"] == "model"


def test_suite_is_at_least_as_strong_as_each_stage_alone(tiny_model, eval_batch, monkeypatch):
    x, y = eval_batch
    stages = (Stage("fgsm", "fast_sigmoid:slope=5"), Stage("pgd", "atan", steps=10), Stage("pgd", "rate", steps=10),
              Stage("square", queries=50))
    monkeypatch.setitem(SUITES, "mini", Suite("mini", stages, cascade=True, claim=True, description="t"))
    eps = 0.08
    suite = _quiet(evaluate, tiny_model, x, y, suite="mini", eps=[eps], checks=False)["worst_case"][0]
    n = len(y)
    for st in stages:
        alone = _quiet(evaluate, tiny_model, x, y, attacks=[st.attack], eps=[eps], surrogate=st.gradient, steps=st.steps,
                       queries=st.queries, checks=False)["worst_case"][0]
        # a stage sees other batch companions in the cascade (other random starts), hence three samples of slack
        assert suite["robust_accuracy"] <= alone["robust_accuracy"] + 3.0 / n, st


def test_standard_suite_is_the_default_and_uses_snn_gradients():
    std = get_suite("standard")
    assert std.cascade and std.claim
    grads = [st.gradient for st in std.stages]
    assert "assg" in grads and grads[0] == "fast_sigmoid:slope=5"  # SNN-aware: adaptive and wide surrogates, wide first
    assert None in grads  # and the model's own surrogate
    assert std.stages[-1].attack == "square"  # gradient-free masking check on the survivors
    assert not get_suite("quick").claim
    import inspect

    assert inspect.signature(evaluate).parameters["attacks"].default is None  # the API's default is the suite
    with pytest.raises(RobustSNNError, match="unknown suite"):
        get_suite("strong")


def test_nan_input_gradients_stop_the_run(tiny_model, eval_batch):
    from robust_snn.neurons import LIF

    class NaNGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u):
            return (u > 0).to(u.dtype)

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    for m in tiny_model.modules():
        if isinstance(m, LIF):
            m.neuron.spike_grad = NaNGrad.apply
    x, y = eval_batch
    with pytest.raises(RobustSNNError, match="NaN or inf"):  # the gradient check
        _quiet(evaluate, tiny_model, x[:8], y[:8], attacks=["fgsm"], eps=[0.1])
    with pytest.raises(RobustSNNError, match="non-finite input gradients"):  # also without checks: never a silent 100 %
        _quiet(evaluate, tiny_model, x[:8], y[:8], attacks=["pgd"], eps=[0.1], steps=2, checks=False)


@pytest.mark.parametrize("bad", ["fast_sigmoid:slope=nan", "atan:alpha=inf", "fast_sigmoid:slope=-1"])
def test_bad_surrogate_parameters_are_one_clear_error(bad, tiny_checkpoint, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--limit", "8", "--surrogate", bad])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error: surrogate parameter") and res.output.count("\n") == 1, res.output
    res = runner.invoke(main, ["train", "--out", str(tmp_path / "m.pt"), "--surrogate", bad, "--epochs", "1"])
    assert res.exit_code == 1 and "surrogate parameter" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "m.pt").exists()
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "s"\nsurrogates = ["{bad}"]\n[[attacks]]\nname = "fgsm"\n')
    res = runner.invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "sw")])
    assert res.exit_code == 1 and "surrogate parameter" in res.output and "Traceback" not in res.output, res.output


def test_budget_options_an_attack_ignores_are_refused(tiny_checkpoint):
    runner = CliRunner()
    res = runner.invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--attack", "pgdl2", "--eps", "0.1", "--limit", "4"])
    assert res.exit_code == 1 and "--eps-l2" in res.output, res.output
    res = runner.invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--attack", "fgsm", "--eps-l2", "1", "--limit", "4"])
    assert res.exit_code == 1 and "--eps-l2" in res.output, res.output
    res = runner.invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--attack", "fgsm", "--queries", "10", "--limit", "4"])
    assert res.exit_code == 1 and "--queries" in res.output, res.output
    res = runner.invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--attack", "fgsm", "--suite", "quick"])
    assert res.exit_code == 1 and "not both" in res.output, res.output
    res = runner.invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--limit", "0"])
    assert res.exit_code == 1 and "'all'" in res.output, res.output


def test_duplicate_eps_are_merged_and_every_accuracy_has_an_interval(tiny_checkpoint):
    res = CliRunner().invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--suite", "quick", "--eps", "0.1,0.1,0.10",
                                    "--steps", "3", "--limit", "40", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [(r["attack"], r["eps"]) for r in data["results"]] == [("fgsm", 0.1), ("pgd", 0.1)]
    assert data["worst_case"][0]["attacks"] == ["fgsm", "pgd"]
    assert data["suite"] == "quick" and data["robustness_claim"] is False
    for r in data["results"] + data["worst_case"] + [data["clean_interval"]]:
        assert r["n"] == 40 and 0 <= r["ci_low"] <= r["k"] / 40 <= r["ci_high"] <= 1
    assert data["worst_case"][0]["ci_high"] - data["worst_case"][0]["ci_low"] > 0.05  # n = 40 is honestly wide


def test_quick_suite_is_labelled_a_smoke_test(tiny_checkpoint):
    res = CliRunner().invoke(main, ["attack", "--checkpoint", str(tiny_checkpoint), "--suite", "quick", "--steps", "2", "--limit", "16"])
    assert res.exit_code == 0, res.output
    assert "NOT a robustness claim" in res.output and "95% Wilson, n=16" in res.output


def test_checks_give_the_same_verdict_in_attack_and_in_a_sweep_report(tiny_model, eval_batch):
    from robust_snn.experiments.report import sanity_checks
    from robust_snn.experiments.runner import _CHECK_KEYS

    x, y = eval_batch
    res = _quiet(evaluate, tiny_model, x, y, attacks=["fgsm", "pgd", "square"], eps=[0.0, 0.05, 0.1], steps=5, queries=30)
    n = res["n"]

    def sweep_rows(results):
        return [{"model": "m", "defense": "none", "surrogate": "model", "num_steps": 4, "seed": 0, "eps": r["eps"], "n": n,
                 "clean_accuracy": res["clean_accuracy"], "robust_accuracy": r["robust_accuracy"], "stochastic": False,
                 "check_rows": [{k: r[k] for k in _CHECK_KEYS if k in r}]} for r in results]

    def verdicts(results):
        eps0 = [r for r in results if r["eps"] == 0][0]["robust_accuracy"]
        attack = _quiet(check_results, results, clean_accuracy=res["clean_accuracy"], n=n, eps_zero_accuracy=eps0, stochastic=False)
        return sorted(c["name"] for c in attack if not c["passed"]), sorted(f.split(": ")[1] for f in sanity_checks(sweep_rows(results)))

    real_attack, real_sweep = verdicts(res["results"])  # whatever this CPU's run gives, both agree
    assert real_attack == real_sweep
    # rows that pass every check pass in both (set, not measured: a tiny run may trip a check on some CPUs)
    clean = [dict(r, robust_accuracy=res["clean_accuracy"] if r["eps"] == 0 else 0.5) for r in res["results"]]
    ok_attack, ok_sweep = verdicts(clean)
    assert ok_attack == ok_sweep == []
    # the same tampered rows fail the same checks in both: accuracy rising with eps, Square beating PGD, eps 0 below clean
    tampered = [dict(r) for r in res["results"]]
    for r in tampered:
        if r["attack"] == "pgd" and r["eps"] == 0.1:
            r["robust_accuracy"] = 1.0
        if r["attack"] == "square":
            r["robust_accuracy"] = 0.0 if r["eps"] > 0 else r["robust_accuracy"]
        if r["attack"] == "fgsm" and r["eps"] == 0:
            r["robust_accuracy"] -= 2 / n
    bad_attack, bad_sweep = verdicts(tampered)
    assert bad_attack == bad_sweep
    assert {"eps=0 reproduces clean accuracy", "robust accuracy non-increasing in eps",
            "gradient-free attack not stronger than gradient attacks"} <= set(bad_attack)


def test_convergence_check_reruns_the_last_gradient_stage(tiny_model, eval_batch, calls, monkeypatch):
    x, y = eval_batch
    monkeypatch.setitem(SUITES, "one", Suite("one", (Stage("pgd", steps=1),), cascade=True, claim=True, description="t"))
    res = _quiet(evaluate, tiny_model, x[:32], y[:32], suite="one", eps=[0.05], convergence=True)
    check = [c for c in res["checks"] if c["name"] == "more iterations do not help"]
    assert len(check) == 1 and "with 2 steps" in check[0]["detail"]
    reruns = [c for c in calls if c["eps"] == 0.05][1:]  # after the stage itself: the convergence rerun on its survivors
    assert len(reruns) == 1 and sum(reruns[0]["sizes"]) == int(res["worst_case_masks"]["Linf@0.05"][:32].sum())


def test_evaluation_result_accessors(tiny_model, eval_batch):
    from robust_snn.attacks import EvaluationResult, result_key

    x, y = eval_batch
    res = _quiet(evaluate, tiny_model, x[:32], y[:32], attacks=["fgsm", "pgd"], eps=[0.0, 0.1], steps=3, keep_examples=True)
    assert isinstance(res, EvaluationResult) and isinstance(res, dict) and res.n == 32
    row = res.row("pgd", 0.1)
    assert row is res["results"][3] and row["attack"] == "pgd" and row["eps"] == 0.1
    assert torch.equal(res.example("pgd", 0.1), res["examples"][result_key("pgd", 0.1)])
    w = res.worst(0.1)
    assert w["robust_accuracy"] == res.worst_mask(0.1).float().mean().item() and w["robust_accuracy"] <= row["robust_accuracy"]
    assert res.passed == all(c["passed"] for c in res.checks)
    with pytest.raises(RobustSNNError, match="no result for square@0.1"):
        res.row("square", 0.1)


@pytest.mark.parametrize("surrogate", [None, "fast_sigmoid:slope=5", "fast_sigmoid", "atan:alpha=3", "ensemble"])
def test_suite_stage_names_are_unique_and_a_repeated_stage_is_skipped(surrogate):
    from robust_snn.attacks.evaluate import _jobs, _surrogates
    from robust_snn.attacks.registry import get_spec

    std = get_suite("standard")
    jobs = _jobs([get_spec(st.attack) for st in std.stages], std, eps=[0.1], eps_l2=[], grads=_surrogates(surrogate),
                 surrogate=surrogate, steps=None, queries=None, seed=0)
    names = [j.label for j in jobs]
    assert len(names) == len(set(names)), names  # one results key per stage
    assert names[-1] == "square"  # gradient-free: no gradient in its name
    runs = [(j.spec.name, j.grads) for j in jobs]
    assert len(runs) == len(set(runs))  # no stage repeats another's attack and gradient
    # the user's gradient equal to the wide stage's (fast sigmoid's default slope is 25, not 5): one stage fewer
    assert len(jobs) == len(std.stages) - (surrogate == "fast_sigmoid:slope=5")


def test_a_stage_seed_offsets_the_runs_seed():
    from robust_snn.attacks.evaluate import _jobs
    from robust_snn.attacks.registry import get_spec

    suite = Suite("seeded", (Stage("apgd", "atan"), Stage("apgd", "sigmoid", seed=3), Stage("square", seed=1)), cascade=True,
                  claim=True, description="t")
    jobs = _jobs([get_spec(st.attack) for st in suite.stages], suite, eps=[0.1], eps_l2=[], grads=[None], surrogate=None,
                 steps=None, queries=None, seed=10)
    assert [j.params["seed"] for j in jobs] == [10, 13, 11]


def test_each_finished_stage_is_logged_for_long_runs(tiny_model, eval_batch, caplog):
    """A --json run prints nothing until it ends; `robust-snn -v attack` shows one line per finished stage."""
    import logging

    x, y = eval_batch
    with caplog.at_level(logging.INFO, logger="robust_snn.attacks.evaluate"):
        res = _quiet(evaluate, tiny_model, x[:16], y[:16], attacks=["fgsm", "pgd"], eps=[0.1], steps=2)
    lines = [r.getMessage() for r in caplog.records if "robust accuracy" in r.getMessage()]
    assert len(lines) == len(res["results"]) == 2, lines
    for line, row in zip(lines, res["results"]):
        assert line.startswith(f"{row['attack']} at eps 0.1: {row['attacked']} attacked, {row['broken']} broken")
        assert f"{100 * row['robust_accuracy']:.2f}%" in line
