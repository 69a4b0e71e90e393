"""Network calls counted by the host in training (forward and backward phase) and in the
likelihood evaluation, as the sampling NFE is counted (gmbench.evaluate._ForwardCounter)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from gmbench.checkpointing import CheckpointPolicy
from gmbench.data.toy2d import EightGaussians
from gmbench.records import RunSpec
from gmbench.runner import run_one
from gmbench.training import StageReport, train
from tests.interrupting import JumpingClock, stopping_at
from tests.plugins.fake_methods import TINY_BUDGET, GaussianFit


class ThreeCalls(GaussianFit):
    """Its step runs ``proj`` and ``outer`` (a listed network that runs ``proj`` inside: one
    call, as a nested network counts once when sampling) and ``proj`` again: three calls per
    step, none in backward."""

    name = "three-calls"

    def __init__(self, data, model_size="tiny"):
        super().__init__(data, model_size)
        self.outer = torch.nn.Sequential(self.proj)

    def modules(self):
        return {**super().modules(), "outer": self.outer}

    def training_step(self, stage, batch, step):
        self.steps_seen.append(step)
        return {"adam": self._nll(self.outer(self.proj(batch))).mean()}  # proj, outer(proj), then _nll's proj


class _BackwardRunsNet(torch.autograd.Function):
    """The identity, whose backward pass runs ``net`` twice, as an adjoint solve runs its
    dynamics network while the host back-propagates."""

    @staticmethod
    def forward(ctx, x, net):
        ctx.net = net
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        for _ in range(2):
            ctx.net(torch.zeros(1, ctx.net.in_features))
        return grad, None


class BackwardCalls(GaussianFit):
    """One network call in the forward phase, two in ``loss.backward()``, per step."""

    name = "backward-calls"

    def training_step(self, stage, batch, step):
        self.steps_seen.append(step)
        return {"adam": _BackwardRunsNet.apply(self._nll(batch).mean(), self.proj)}


def _train(cls, budget=TINY_BUDGET, **kwargs):
    data = EightGaussians()
    torch.manual_seed(0)
    method = cls(data.spec())
    reports = train(method, data.split("train").x, budget, "toy2d", torch.Generator().manual_seed(0), **kwargs)
    return method, reports


def test_forward_calls_of_a_step_are_counted_a_nested_network_once():
    _, (report,) = _train(ThreeCalls)
    assert report.steps > 10
    assert report.network_calls_forward == 3 * report.steps
    assert report.network_calls_backward == 0
    assert report.to_dict()["network_calls_forward"] == 3 * report.steps  # what the record's stage holds


def test_calls_inside_backward_are_counted_apart_from_the_forward_ones():
    _, (report,) = _train(BackwardCalls)
    assert report.steps > 10
    assert (report.network_calls_forward, report.network_calls_backward) == (report.steps, 2 * report.steps)


def test_preparation_and_curve_points_are_not_counted_as_steps():
    from tests.plugins.fake_methods import TwoStage

    data = EightGaussians()
    method = TwoStage(data.spec())
    sampled = []

    def point(fraction):  # a curve point samples, between steps
        sampled.append(method.sample(8, "direct", 1, torch.Generator().manual_seed(0)).shape)
        return {"value": 0.0}

    # the latent stage's preparation runs the encoder over the training set, outside the steps
    reports = train(method, data.split("train").x, TINY_BUDGET, "toy2d", torch.Generator().manual_seed(0),
                    milestones=(0.5,), on_milestone=point)
    assert sampled == [(8, 2)] and reports[1].prepare_flops > 0
    for report in reports:
        assert (report.network_calls_forward, report.network_calls_backward) == (report.steps, 0), report.name


def test_counting_changes_nothing_in_training(monkeypatch):
    import gmbench.training

    class NoCounter:  # what training was before it counted: no hooks at all
        calls = 0

        def __init__(self, method):
            pass

        def close(self):
            pass

    counted, (counted_report,) = _train(BackwardCalls)
    monkeypatch.setattr(gmbench.training, "_ForwardCounter", NoCounter)
    plain, (plain_report,) = _train(BackwardCalls)
    assert plain_report.network_calls_backward == 0  # the stand-in counted nothing
    assert counted_report.steps == plain_report.steps and counted_report.flops == plain_report.flops
    assert counted_report.final_losses == plain_report.final_losses
    for key, value in counted.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key]), key


def test_a_resumed_stage_counts_as_an_uninterrupted_one(tmp_path):
    _, (whole,) = _train(BackwardCalls)

    clock = JumpingClock()  # jumps past the deadline once step 7 has run: the stage stops there, checkpointed
    StopsAtStep7 = stopping_at(BackwardCalls, 7, clock)

    folder = tmp_path / "ckpt"
    _, (cut,) = _train(StopsAtStep7, checkpoints=CheckpointPolicy(folder, every_s=1e9), clock=clock, deadline=1.0)
    assert cut.stopped and cut.steps == 8
    assert (cut.network_calls_forward, cut.network_calls_backward) == (8, 16)
    _, (resumed,) = _train(BackwardCalls, checkpoints=CheckpointPolicy(folder, every_s=1e9, resume=True))
    assert resumed.steps == whole.steps
    assert (resumed.network_calls_forward, resumed.network_calls_backward) == (
        whole.network_calls_forward, whole.network_calls_backward)

    # a checkpoint written before the counts existed still loads; the resumed stage's counts
    # are then unknown (None), never a part passed off as the whole
    _train(StopsAtStep7, checkpoints=CheckpointPolicy(folder, every_s=1e9), clock=clock, deadline=1.0)
    sidecar_path = folder / "state.json"
    sidecar = json.loads(sidecar_path.read_text())
    for report in sidecar["reports"]:
        del report["network_calls_forward"], report["network_calls_backward"]
    sidecar_path.write_text(json.dumps(sidecar))
    _, (old,) = _train(BackwardCalls, checkpoints=CheckpointPolicy(folder, every_s=1e9, resume=True))
    assert old.steps == whole.steps and old.final_losses == whole.final_losses
    assert old.network_calls_forward is None and old.network_calls_backward is None
    assert StageReport(**{"name": "fit", "steps": 3}).network_calls_forward is None  # an old record's stage


class CountedLikelihood(GaussianFit):
    name = "counted-likelihood"
    likelihood_batches = 0

    def log_likelihood(self, x, generator):
        type(self).likelihood_batches += 1
        return super().log_likelihood(x, generator)  # one call of proj per batch


def test_a_run_records_its_training_and_likelihood_calls(tmp_path):
    from gmbench.metrics.likelihood import HeldOutLikelihood as Likelihood
    from gmbench.plugins import Registries, make_plugin_manager
    from tests.plugins.fake_methods import FakePlugin, TinyBudgetPlugin

    reg = Registries(make_plugin_manager(extra_plugins=(FakePlugin(CountedLikelihood), TinyBudgetPlugin()),
                                         load_entrypoints=False))
    rec = run_one(RunSpec("counted-likelihood", "8gaussians", "tiny-test", 0), reg, tmp_path)
    assert rec["status"] == "ok", rec.get("error")
    (stage,) = rec["train"]["stages"]
    assert (stage["network_calls_forward"], stage["network_calls_backward"]) == (stage["steps"], 0)
    # 8gaussians' 5,000 test points, the likelihood's first 2,000 in batches of 500: 4 calls
    expected = math.ceil(min(Likelihood.max_examples, 5000) / Likelihood.batch_size)
    assert CountedLikelihood.likelihood_batches == expected == 4
    assert rec["cost"]["profile"]["likelihood_calls"] == expected


def test_an_evaluation_journal_keeps_the_likelihood_calls(tmp_path):
    from gmbench.eval_journal import EvalJournal

    journal = EvalJournal(tmp_path, {"weights": "w"})
    journal.record_model([{"name": "test_nll", "value": 1.0}], 2.0, calls=4)
    assert EvalJournal.open(tmp_path, {"weights": "w"}).take_model()["calls"] == 4


@pytest.mark.parametrize("adjoint", [False, True])
def test_ffjord_counts_its_adjoint_solve_in_the_backward_phase(adjoint):
    """RK4 x 4 training solve: 16 dynamics evaluations per step; the adjoint solves the same
    grid backwards in loss.backward(), 16 more, where back-propagating through the solver
    runs no network."""
    from gmbench.budget import SMOKE
    from gmbench_methods.flows.ffjord import FFJORD

    budget = dataclasses.replace(SMOKE, train_flops={"toy2d": 1.2e10, "image": 1.0, "text": 1.0})
    data = EightGaussians()
    torch.manual_seed(0)
    method = FFJORD(data.spec(), model_size="tiny", adjoint=adjoint)
    (report,) = train(method, data.split("train").x, budget, "toy2d", torch.Generator().manual_seed(0))
    assert report.steps >= 1
    assert report.network_calls_forward == 16 * report.steps
    assert report.network_calls_backward == (16 * report.steps if adjoint else 0)
    assert method.dynamics.calls == report.network_calls_forward + report.network_calls_backward
