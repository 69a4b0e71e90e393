"""Quality against training compute from one run (gmbench/curve.py, train's milestones)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from gmbench.hookspecs import hookimpl
from gmbench.records import RunSpec
from gmbench.runner import run_one
from gmbench.training import train
from tests.plugins.fake_methods import TINY_BUDGET

CURVE_BUDGET = dataclasses.replace(TINY_BUDGET, name="tiny-curve", curve_fractions=(0.25, 0.5),
                                   curve_samples={"toy2d": 128, "image": 32, "text": 8})


class CurveBudgetPlugin:
    @hookimpl
    def gmbench_register_budgets(self, register):
        register(CURVE_BUDGET)


@pytest.fixture
def curve_registries():
    from gmbench.plugins import Registries, make_plugin_manager
    from tests.plugins.fake_methods import FakePlugin, TinyBudgetPlugin

    pm = make_plugin_manager(extra_plugins=(FakePlugin(), TinyBudgetPlugin(), CurveBudgetPlugin()),
                             load_entrypoints=False)
    return Registries(pm)


def _metrics(rec):
    return [(e["name"], e.get("sampler"), e.get("nfe"), e.get("split"), e.get("value")) for e in rec["metrics"]]


def test_a_run_records_its_curve_at_the_budget_fractions(curve_registries, tmp_path):
    rec = run_one(RunSpec("gaussfit", "8gaussians", "tiny-curve", 0), curve_registries, tmp_path)
    assert rec["status"] == "ok", rec.get("error")
    curve = rec["curve"]
    assert [p["fraction"] for p in curve] == [0.25, 0.5, 1.0]
    allowed = rec["train"]["flops_allowed"]
    for p in curve:
        assert p["metric"] == "swd" and p["n"] == 128 and p["value"] > 0, p
        if p["fraction"] < 1:  # taken once the fraction was spent, not before
            assert p["fraction"] * allowed <= p["flops"] < (p["fraction"] + 0.05) * allowed
    assert curve[0]["flops"] < curve[1]["flops"] < curve[2]["flops"] == rec["train"]["flops"]
    assert curve[-1]["step"] == rec["train"]["steps"]


def test_taking_a_curve_does_not_change_the_run(curve_registries, tmp_path):
    with_curve = run_one(RunSpec("gaussfit", "8gaussians", "tiny-curve", 0), curve_registries, tmp_path / "a")
    without = run_one(RunSpec("gaussfit", "8gaussians", "tiny-test", 0), curve_registries, tmp_path / "b")
    assert "curve" not in without
    assert with_curve["train"]["steps"] == without["train"]["steps"]
    assert with_curve["train"]["stages"][0]["final_losses"] == without["train"]["stages"][0]["final_losses"]
    assert _metrics(with_curve) == _metrics(without)


def test_milestones_before_the_last_stage_are_recorded_as_skipped():
    from gmbench.data.toy2d import EightGaussians
    from tests.plugins.fake_methods import TwoStage

    data = EightGaussians()
    calls = []
    method = TwoStage(data.spec(), model_size="tiny")
    # the autoencoder stage has a quarter of the budget: 1/8 falls in it, 1/2 in the latent stage
    reports = train(method, data.split("train").x, TINY_BUDGET, "toy2d", torch.Generator().manual_seed(0),
                    milestones=(0.125, 0.5), on_milestone=lambda f: calls.append(f) or {"value": 0.0})
    assert [p["fraction"] for p in reports[0].curve] == [0.125] and reports[0].curve[0]["skipped"]
    assert [p["fraction"] for p in reports[1].curve] == [0.5] and "skipped" not in reports[1].curve[0]
    assert calls == [0.5]


def test_milestone_callback_runs_in_eval_mode_and_leaves_training_unchanged():
    from gmbench.data.toy2d import EightGaussians
    from tests.plugins.fake_methods import GaussianFit

    class Jittered(GaussianFit):
        # its steps draw from torch's global generator, as real methods' do: a callback that
        # consumed that stream without the host restoring it would change the trained weights
        def training_step(self, stage, batch, step):
            return super().training_step(stage, batch + 0.01 * torch.randn_like(batch), step)

    data = EightGaussians()
    seen = []

    def trained(on_milestone):
        torch.manual_seed(0)
        method = Jittered(data.spec(), model_size="tiny")
        seen_method.append(method)
        reports = train(method, data.split("train").x, TINY_BUDGET, "toy2d", torch.Generator().manual_seed(0),
                        milestones=(0.5,), on_milestone=on_milestone)
        return method, reports

    def probe(fraction):
        seen.append((fraction, any(m.training for m in seen_method[-1].modules().values())))
        torch.randn(1000)  # would shift training's RNG stream if the host did not restore it
        return {"value": 1.0}

    seen_method = []
    plain, plain_reports = trained(None)
    probed, probed_reports = trained(probe)
    assert seen == [(0.5, False)]
    assert not any(m.training for m in probed.modules().values())  # train() ends in eval mode
    assert probed_reports[0].curve[0]["value"] == 1.0 and probed_reports[0].curve[0]["fraction"] == 0.5
    assert plain_reports[0].curve[0]["skipped"]  # no evaluator: the point says why it has no value
    assert probed_reports[0].steps == plain_reports[0].steps
    plain_state, probed_state = plain.state_dict(), probed.state_dict()
    assert plain_state.keys() == probed_state.keys()
    for key in plain_state:
        assert torch.equal(plain_state[key], probed_state[key]), key


# -- curve points a method cannot give, said before any training ----------------------------


def test_the_fractions_before_the_last_stage_are_known_from_the_stages():
    from gmbench.curve import fractions_before_last_stage
    from gmbench.data.toy2d import EightGaussians
    from tests.plugins.fake_methods import GaussianFit, TwoStage

    spec = EightGaussians().spec()
    # TwoStage's autoencoder stage has a quarter of the budget: 1/8 falls in it, 1/4 is taken
    # at the latent stage's first step (test_milestones_before_the_last_stage_are_recorded_as_skipped)
    assert fractions_before_last_stage(TwoStage(spec), (0.125, 0.25, 0.5)) == ([0.125], 0.25, "latent")
    assert fractions_before_last_stage(GaussianFit(spec), (0.125, 0.25, 0.5)) == ([], 0.0, "fit")


def _cli_with(monkeypatch, *budgets):
    """``gmbench run`` over the fake methods and these in-process budgets (a user's own, not
    gmbench's), with a runner that records what it was asked to run instead of training."""
    import gmbench.plugins
    import gmbench.runner
    from gmbench.plugins import Registries, make_plugin_manager
    from tests.plugins.fake_methods import FakePlugin, GaussianFit, TwoStage

    class UserBudgets:
        @hookimpl
        def gmbench_register_budgets(self, register):
            for b in budgets:
                register(b)

    monkeypatch.setattr(gmbench.plugins, "Registries", lambda: Registries(make_plugin_manager(
        extra_plugins=(FakePlugin(GaussianFit, TwoStage), UserBudgets()), load_entrypoints=False)))
    ran = []

    def run_all(matrix, reg, out_dir, **kwargs):
        ran.extend(matrix.specs)
        os.makedirs(out_dir, exist_ok=True)  # where the summary table looks for records
        return []

    monkeypatch.setattr(gmbench.runner, "run_all", run_all)

    def invoke(*args):
        from click.testing import CliRunner

        from gmbench.cli import main

        return CliRunner().invoke(main, ["run", "--datasets", "8gaussians", *map(str, args)])

    return invoke, ran


def test_curve_points_a_method_cannot_give_at_all_are_a_one_line_error_before_any_training(monkeypatch, tmp_path):
    # the user's budget asks for points at 1/8 and 1/5: both fall in TwoStage's first stage
    mine = dataclasses.replace(CURVE_BUDGET, name="mine", curve_fractions=(0.125, 0.2))
    invoke, ran = _cli_with(monkeypatch, mine)
    out = tmp_path / "results"
    res = invoke("--plugins", "gaussfit,twostage", "--budget", "mine", "--out", out)
    assert res.exit_code == 1, res.output
    assert res.output.strip().splitlines() == [
        "Error: budget 'mine' asks for curve points at 1/8, 1/5 of the training FLOPs, but twostage on 8gaussians "
        "can give none of them: it is sampled only once its last stage, 'latent', starts at 1/4 of the training "
        "FLOPs; give the budget curve_fractions of at least 1/4, or leave twostage out of --plugins"]
    assert ran == [] and not out.exists()  # nothing trained, nothing written

    # without it the same budget runs: gaussfit has one stage and gives every point
    res = invoke("--plugins", "gaussfit", "--budget", "mine", "--out", out)
    assert res.exit_code == 0, res.output
    assert [s.method for s in ran] == ["gaussfit"] and "note" not in res.output


def test_curve_points_some_runs_cannot_give_are_noted_once_per_run_and_the_runs_go_ahead(monkeypatch, tmp_path):
    # a user's budget of which twostage can give 1/2 but not 1/8: the runs go ahead, with a note
    partly = dataclasses.replace(CURVE_BUDGET, name="partly", curve_fractions=(0.125, 0.5))
    invoke, ran = _cli_with(monkeypatch, partly)
    res = invoke("--plugins", "gaussfit,twostage", "--budget", "partly", "--seeds", "2x", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert len(ran) == 4
    notes = [line for line in res.output.splitlines() if "note" in line]
    assert notes == ["gmbench: note: twostage on 8gaussians (partly, seeds 0, 1): curve point(s) at 1/8 of the "
                     "training FLOPs will be recorded as skipped: it is sampled only once its last stage, 'latent', "
                     "starts at 1/4 of the training FLOPs"]

    # gmbench's own budgets take the suite's default fractions (small: 1/8, 1/4, 1/2) for every
    # method: a method that cannot give them all is noted, never refused
    ran.clear()
    res = invoke("--plugins", "twostage", "--budget", "small", "--out", tmp_path / "small")
    assert res.exit_code == 0, res.output
    assert len(ran) == 1
    assert [line for line in res.output.splitlines() if "note" in line] == [
        "gmbench: note: twostage on 8gaussians (small, seed 0): curve point(s) at 1/8 of the training FLOPs will be "
        "recorded as skipped: it is sampled only once its last stage, 'latent', starts at 1/4 of the training FLOPs"]
