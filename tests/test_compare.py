"""`gmbench compare`: the CI regression gate (exit 0 pass, 1 regression, 2 unusable input)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gmbench.cli import main
from gmbench.compare import DEFAULT_TOLERANCE, CompareError, Tolerance, compare_records, parse_tolerances, render
from tests.test_leaderboard import make_record, write


def runs(swd=(0.50, 0.52, 0.48), nll=2.0, **kw):
    """Three seeds of one method, each with swd at two NFEs and sample_nll."""
    return [make_record("ddpm", seed, {("swd", "ddim", 10): v, ("swd", "ddim", 50): v * 0.9, ("sample_nll", "ddim", 10): nll},
                        **kw) for seed, v in enumerate(swd)]


def gate(tmp_path, baseline, current, *args):
    b = write(tmp_path / "base", baseline)
    c = write(tmp_path / "cur", current)
    return CliRunner().invoke(main, ["compare", str(b), str(c), *map(str, args)])


def verdicts(result) -> dict[str, str]:
    """(metric@sampler/nfe or run) -> verdict, from --format json output."""
    out = json.loads(result.output)
    return {(f"{r['metric']}@{r['nfe']}" if r["metric"] else "run") + f"/s{r['seed']}": r["verdict"] for r in out["rows"]}


# -- verdicts ---------------------------------------------------------------------------------


def test_identical_results_pass(tmp_path):
    res = gate(tmp_path, runs(), runs())
    assert res.exit_code == 0, res.output
    assert res.output.strip().startswith("PASS: 3 run(s) in both sets; values: 12 ok")  # 3 sample values + test NLL per run


def test_worse_beyond_tolerance_fails_and_better_passes(tmp_path):
    worse = runs(swd=(0.60, 0.52, 0.48))  # seed 0: +20% at both NFEs
    res = gate(tmp_path, runs(), worse)
    assert res.exit_code == 1
    assert "REGRESSED" in res.output and "ddpm · 8gaussians · tiny · seed 0" in res.output and "+20.0%" in res.output
    assert res.output.strip().splitlines()[-1].startswith("FAIL:")
    better = runs(swd=(0.40, 0.52, 0.48))
    res = gate(tmp_path / "2", runs(), better, "--format", "json")
    assert res.exit_code == 0
    assert verdicts(res)["swd@10/s0"] == "improved"


def test_small_moves_are_within_the_default_tolerance(tmp_path):
    res = gate(tmp_path, runs(), runs(swd=(0.51, 0.52, 0.48), nll=2.009), "--format", "json")
    assert res.exit_code == 0, res.output
    assert set(verdicts(res).values()) == {"ok"}


def test_direction_comes_from_the_metric_registry():
    base = [make_record("m", 0, {("acc", "s", 1): 0.9, ("err", "s", 1): 0.1}, likelihood=None)]
    cur = [make_record("m", 0, {("acc", "s", 1): 0.8, ("err", "s", 1): 0.05}, likelihood=None)]
    out = compare_records(base, cur, {"acc": "higher", "err": "lower"}, default="abs:0.01")
    assert {r.metric: r.verdict for r in out.rows} == {"acc": "regressed", "err": "improved"}
    flipped = compare_records(base, cur, {"acc": "lower", "err": "higher"}, default="abs:0.01")
    assert {r.metric: r.verdict for r in flipped.rows} == {"acc": "improved", "err": "regressed"}


def test_per_metric_and_default_tolerances(tmp_path):
    worse = runs(swd=(0.60, 0.52, 0.48), nll=2.05)
    res = gate(tmp_path, runs(), worse, "--tol", "swd=rel:0.25", "--format", "json")
    assert res.exit_code == 0, res.output  # swd +20% within 25%; sample_nll +2.5% within the default 5%
    res = gate(tmp_path / "2", runs(), worse, "--tol", "swd=rel:0.25", "--default-tol", "abs:0.01", "--format", "json")
    assert res.exit_code == 1
    v = verdicts(res)
    assert v["sample_nll@10/s0"] == "regressed" and v["swd@10/s0"] == "ok"


def test_seed_standard_deviation_tolerance(tmp_path):
    base = runs(swd=(0.50, 0.52, 0.48))  # sd over seeds 0.02 at NFE 10
    cur = runs(swd=(0.53, 0.52, 0.48))  # seed 0 worse by 1.5 sd
    assert gate(tmp_path, base, cur, "--default-tol", "sd:2").exit_code == 0
    res = gate(tmp_path / "2", base, cur, "--default-tol", "sd:1", "--format", "json")
    assert res.exit_code == 1 and verdicts(res)["swd@10/s0"] == "regressed"
    res = gate(tmp_path / "3", base[:1], cur[:1], "--tol", "swd=sd:2")  # one seed: no sd to scale by
    assert res.exit_code == 2
    assert "needs at least 2 seeds" in res.output and "Traceback" not in res.output


def test_tolerance_parsing():
    assert Tolerance.parse("rel:0.05+abs:0.01") == Tolerance(abs=0.01, rel=0.05)
    assert str(Tolerance.parse(DEFAULT_TOLERANCE)) == DEFAULT_TOLERANCE
    t = Tolerance.parse("rel:0.1+abs:0.5+sd:2")
    assert t.allowed(10.0, 0.1) == 1.0 and t.allowed(1.0, 0.1) == 0.5 and t.allowed(1.0, 1.0) == 2.0
    assert parse_tolerances(["fid=rel:0.1", "swd = abs:0.05"]) == {"fid": Tolerance(rel=0.1), "swd": Tolerance(abs=0.05)}
    for bad in ("rel", "pct:3", "rel:x", "abs:-1", "rel:nan"):
        with pytest.raises(CompareError):
            Tolerance.parse(bad)


# -- runs that failed, vanished, appeared -----------------------------------------------------


def test_failed_missing_new_and_fixed_runs(tmp_path):
    base = runs() + [make_record("vae", 0, {}, status="failed", error="OOM")]
    cur = runs()[:2] + [
        make_record("ddpm", 2, {}, status="failed", error="RuntimeError: NaN loss\nat step 7"),
        make_record("vae", 0, {("swd", "p", 1): 0.4}),
        make_record("gan", 0, {("swd", "p", 1): 0.4}),
    ]
    res = gate(tmp_path, base, cur, "--format", "json")
    assert res.exit_code == 1
    rows = {(r["method"], r["seed"]): r for r in json.loads(res.output)["rows"] if not r["metric"]}
    assert rows[("ddpm", 2)]["verdict"] == "failed" and rows[("ddpm", 2)]["note"] == "RuntimeError: NaN loss"
    assert rows[("vae", 0)]["verdict"] == "fixed" and rows[("gan", 0)]["verdict"] == "new"
    res = gate(tmp_path / "2", base, runs()[:2] + cur[3:])
    assert res.exit_code == 1 and "MISSING" in res.output and "not in the current results" in res.output
    res = gate(tmp_path / "3", runs(), runs() + cur[4:])
    assert res.exit_code == 0 and "new" in res.output  # a new run is news, not a failure


def test_shared_only_compares_the_common_runs_and_counts_the_others(tmp_path):
    base = runs() + [make_record("vae", 0, {("swd", "p", 1): 0.4})]
    cur = runs()[:2] + [make_record("gan", 0, {("swd", "p", 1): 0.4}), make_record("flow", 0, {("swd", "p", 1): 0.4})]
    res = gate(tmp_path, base, cur)
    assert res.exit_code == 1  # without the flag: two runs are missing
    # values and whole runs are counted apart
    assert res.output.strip().splitlines()[-1] == "FAIL: 2 run(s) in both sets; values: 8 ok; runs: 2 missing, 2 new"
    res = gate(tmp_path / "2", base, cur, "--shared-only")
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == (
        "PASS: 2 run(s) in both sets; values: 8 ok; 4 run(s) not in both sets, not compared "
        "(2 only in the baseline, 2 only in the current results)")
    out = json.loads(gate(tmp_path / "3", base, cur, "--shared-only", "--format", "json").output)
    assert out["not_shared"] == {"baseline": 2, "current": 2} and out["runs"] == 2
    assert {r["verdict"] for r in out["rows"]} == {"ok"}
    # the runs both sets hold are still gated: a regression or a failure there fails
    worse = runs(swd=(0.60, 0.52, 0.48))[:2] + cur[2:]
    assert gate(tmp_path / "4", base, worse, "--shared-only").exit_code == 1
    broken = [make_record("ddpm", 0, {}, status="failed", error="boom")] + cur[1:]
    res = gate(tmp_path / "5", base, broken, "--shared-only")
    assert res.exit_code == 1 and "FAILED" in res.output
    # no run in both sets: a gate that compared nothing must not pass
    res = gate(tmp_path / "6", base, cur[2:], "--shared-only")
    assert res.exit_code == 2 and "nothing was compared" in res.output and "PASS" not in res.output


def test_incomplete_runs_fail_like_failed_ones(tmp_path):
    # an incomplete run was scored, and its values may even look fine: it still fails the gate
    cur = runs()
    cur[1].update(status="incomplete", budget_spent=0.36)
    res = gate(tmp_path, runs(), cur, "--format", "json")
    assert res.exit_code == 1
    rows = {(r["seed"], r["metric"]): r for r in json.loads(res.output)["rows"]}
    assert rows[(1, "")]["verdict"] == "failed" and "36% of its budget" in rows[(1, "")]["note"]
    assert not any(seed == 1 and metric for seed, metric in rows)  # its values are not compared
    base = runs()
    base[0].update(status="incomplete", budget_spent=0.5)
    res = gate(tmp_path / "2", base, runs(), "--format", "json")
    assert res.exit_code == 0, res.output
    fixed = next(r for r in json.loads(res.output)["rows"] if r["seed"] == 0)
    assert fixed["verdict"] == "fixed" and fixed["note"].startswith("incomplete in the baseline")


def test_validation_values_are_not_gated(tmp_path):
    def with_val(val):
        recs = runs()
        for r in recs:
            r["metrics"].append({"name": "swd", "sampler": "ddim", "nfe": 10, "value": val, "split": "val"})
        return recs

    res = gate(tmp_path, with_val(0.5), with_val(5.0), "--format", "json")  # val 10x worse, test equal
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["counts"] == {"ok": 12}


def test_a_value_that_disappeared_fails(tmp_path):
    cur = runs()
    cur[1]["metrics"] = [e for e in cur[1]["metrics"] if e.get("nfe") != 50]
    cur[1]["metrics"].append({"name": "*", "sampler": "ddim", "nfe": 50, "value": None, "error": "MetricError: 3 samples contain NaN"})
    res = gate(tmp_path, runs(), cur, "--format", "json")
    assert res.exit_code == 1
    row = next(r for r in json.loads(res.output)["rows"] if r["verdict"] == "missing value")
    assert (row["seed"], row["metric"], row["nfe"]) == (1, "swd", 50) and "NaN" in row["note"]


# -- protocol and input errors ----------------------------------------------------------------


def test_mismatched_fingerprints_are_refused_unless_allowed(tmp_path):
    other = runs(fingerprint="fp-other", eval_samples=5000)
    res = gate(tmp_path, runs(), other)
    assert res.exit_code == 2
    assert "different protocols for 3 run(s)" in res.output and "eval_samples" in res.output and "--allow-mixed" in res.output
    assert gate(tmp_path / "2", runs(), other, "--allow-mixed").exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["--tol", "swd:rel:0.1"], "bad --tol 'swd:rel:0.1'"),
    (["--tol", "swd=pct:3"], "bad tolerance 'pct:3'"),
    (["--tol", "sdw=rel:0.1"], "unknown metric 'sdw'. Did you mean 'swd'?"),
    (["--default-tol", "rel:-1"], "must be a finite number >= 0"),
])
def test_bad_tolerances(tmp_path, args, message):
    res = gate(tmp_path, runs(), runs(), *args)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no such results path"),
    (lambda d: d.mkdir(), "no run records (*.json) found"),
    (lambda d: write(d, runs()) and (d / "torn.json").write_text("{"), "is not valid JSON"),
    (lambda d: write(d, runs(schema=7)), "has schema 7, newer than this gmbench"),
    (lambda d: write(d, [{"method": "x", "status": "ok", "dataset": "8gaussians"}]), "lacks field(s) budget, seed"),
    # hand-edited records: one line naming the field, never a traceback (int("zero")) or a silent skip ("NaN")
    (lambda d: write(d, [runs()[0], {**runs()[1], "seed": "zero"}]), "malformed record of 'ddpm' on '8gaussians'/'tiny' "
                                                                     "seed 'zero': 'seed' is 'zero', not an integer"),
    (lambda d: write(d, [{**runs()[0], "metrics": [{"name": "swd", "sampler": "ddim", "nfe": 10, "value": "NaN"}]}]),
     "metric 'swd' has value 'NaN', not a number (write null for no value)"),
])
def test_bad_records_exit_2_with_one_line(tmp_path, make, message):
    base = write(tmp_path / "base", runs())
    make(tmp_path / "cur")
    for args in ([base, tmp_path / "cur"], [tmp_path / "cur", base]):
        res = CliRunner().invoke(main, ["compare", *map(str, args)])
        assert res.exit_code == 2, res.output
        assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
        assert message in res.output and len(res.output.strip().splitlines()) == 1


def test_a_record_file_compares_with_a_directory(tmp_path):
    base = write(tmp_path / "base", runs()[:1])
    one = next(base.iterdir())
    res = CliRunner().invoke(main, ["compare", str(one), str(base)])
    assert res.exit_code == 0, res.output


def test_markdown_output_is_escaped(tmp_path):
    evil = [make_record("a|b<i>", 0, {("swd", "s", 1): 1.0})]
    worse = [make_record("a|b<i>", 0, {("swd", "s", 1): 2.0})]
    res = gate(tmp_path, evil, worse, "--format", "markdown")
    assert res.exit_code == 1
    table = [line for line in res.output.splitlines() if line.startswith("|")]
    assert "a\\|b&lt;i&gt;" in res.output and "<i>" not in res.output
    assert len({line.replace("\\|", "").count("|") for line in table}) == 1


def test_fresh_runs_match_their_baseline(tmp_path):
    """The smoke gate in miniature: the same runs twice on this machine compare clean."""
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.runner import expand, run_all
    from tests.plugins.fake_methods import FakePlugin, GaussianFit, TinyGAN
    from tests.test_leaderboard import TinyBudgetPlugin

    reg = Registries(make_plugin_manager(extra_plugins=(FakePlugin(GaussianFit, TinyGAN), TinyBudgetPlugin()),
                                         load_entrypoints=False))
    matrix = expand(reg, "gaussfit,tinygan", "8gaussians", "lb-tiny", seeds=(0,))
    run_all(matrix, reg, tmp_path / "baseline")
    run_all(matrix, reg, tmp_path / "current")
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "baseline"), str(tmp_path / "current"), "--all"])
    assert res.exit_code == 0, res.output
    assert "regressed" not in res.output and "PASS: 2 run(s) in both sets" in res.output


def test_render_lists_only_what_changed_unless_all():
    out = compare_records(runs(), runs(swd=(0.6, 0.52, 0.48)), {"swd": "lower", "sample_nll": "lower", "test_nll": "lower"})
    short, full = render(out), render(out, show_all=True)
    assert short.count("\n") < full.count("\n")
    assert "seed 1" not in short and "seed 1" in full


def test_help_states_the_default_tolerance_and_exit_codes():
    res = CliRunner().invoke(main, ["compare", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert f"[default: {DEFAULT_TOLERANCE}]" in text and "Exits 1" in text and "2 if the inputs cannot be compared" in text


@pytest.mark.parametrize("flags", [(), ("--shared-only",)])
def test_sets_with_no_run_in_common_cannot_be_compared(tmp_path, flags):
    # (without --shared-only this read as a failed gate: "137 run(s) compared; 135 missing, 2 new")
    other = [make_record("gan", 0, {("swd", "p", 1): 0.4}), make_record("gan", 1, {("swd", "p", 1): 0.4})]
    res = gate(tmp_path, runs(), other, *flags)
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        f"Error: no run is in both sets (3 only in {tmp_path / 'base'}, 2 only in {tmp_path / 'cur'}): nothing was "
        "compared; give records of the same methods, datasets, budget and seeds"]


def test_a_change_equal_to_the_tolerance_is_within_it(tmp_path):
    base = runs(swd=(0.0, 0.0, 0.0))
    cur = runs(swd=(0.01, 0.0, 0.0))  # +0.01 at NFE 10 against abs:0.01: ok; +0.02 would regress
    res = gate(tmp_path, base, cur, "--tol", "swd=abs:0.01", "--format", "json")
    assert res.exit_code == 0, res.output
    assert set(verdicts(res).values()) == {"ok"}
    res = gate(tmp_path / "2", base, runs(swd=(0.02, 0.0, 0.0)), "--tol", "swd=abs:0.01")
    assert res.exit_code == 1 and "regressed" in res.output
