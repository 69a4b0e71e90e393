"""Tests for the `rectified-flow` plugin (Liu, Gong & Liu, arXiv 2209.03003).

Checked independently of the plugin's code:

* the interpolation ``X_t = t X_1 + (1 - t) X_0`` and its target ``X_1 - X_0`` (Eq. 1);
* reflow pairs: shape ``(N, 2, *shape)``, each sample the Euler image of its noise under the
  stage-1 field, their number sized from the reflow stage's allowance, and their cost (counted
  from outside, as the host counts it) within ``pair_share`` of it; under the host's own
  training loop the preparation stays inside its allowance;
* the straightness ``S(Z)`` of known fields: 0 for a constant field, the closed form of the
  Euler trajectories for ``v(x, t) = x``;
* the Euler sampler on a linear field is the matrix power ``(I + A / N)^N``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from gmbench.budget import SMOKE, Budget
from gmbench.data.base import DataSpec
from gmbench.data.toy2d import EightGaussians
from gmbench.flops import count_cost
from gmbench.method import MethodError
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.flow_matching.rectified_flow import RectifiedFlow

TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
IMAGE = DataSpec(name="img", modality="image", shape=(1, 3, 3), levels=256, value_range=(-1.0, 1.0))
A2 = np.array([[-0.3, 0.8], [-0.5, 0.2]])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class LinearField(nn.Module):
    def __init__(self, A: np.ndarray, shift=0.0):
        super().__init__()
        self.A, self.shift, self.calls = torch.tensor(A, dtype=torch.float32), shift, 0

    def forward(self, x, t):
        self.calls += 1
        return (x.flatten(1) @ self.A.T).reshape(x.shape) + self.shift


def view_for(budget: Budget, method: RectifiedFlow, modality: str = "toy2d"):
    total = budget.flops_for(modality)
    return budget.view(modality, {s.name: total * s.budget_share for s in method.stages()})


# ------------------------------------------------------------------ the objective


def test_interpolation_and_target_are_eq_1():
    x0, x1 = torch.randn(2, 64, 2, generator=gen(1))
    t = torch.rand(64, generator=gen(2))
    xt, target = RectifiedFlow.interpolate(x0, x1, t)
    torch.testing.assert_close(xt, t[:, None] * x1 + (1 - t[:, None]) * x0)
    torch.testing.assert_close(target, x1 - x0)
    # images broadcast t per example
    xi0, xi1 = torch.randn(2, 4, 1, 3, 3, generator=gen(3))
    ti = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt, _ = RectifiedFlow.interpolate(xi0, xi1, ti)
    torch.testing.assert_close(xt[0], xi0[0])
    torch.testing.assert_close(xt[3], xi1[3])
    torch.testing.assert_close(xt[1], 0.25 * xi1[1] + 0.75 * xi0[1])


def test_reflow_step_trains_on_the_pairs_it_is_given():
    """On a pair batch the loss is the regression onto Z_1 - Z_0 of those pairs (v = 0 at start)."""
    m = RectifiedFlow(TOY, model_size="tiny")
    pairs = torch.stack([torch.zeros(10, 2), torch.full((10, 2), 3.0)], dim=1)  # Z_1 - Z_0 = 3
    assert float(m.training_step("reflow", pairs, 0)["adam"].detach()) == pytest.approx(9.0)


def test_stages_and_shares():
    m = RectifiedFlow(TOY, model_size="tiny")
    assert [(s.name, s.budget_share) for s in m.stages()] == [("flow", 0.5), ("reflow", 0.5)]
    one = RectifiedFlow(TOY, model_size="tiny", reflow=False)
    assert [(s.name, s.budget_share) for s in one.stages()] == [("flow", 1.0)]
    assert [s.budget_share for s in RectifiedFlow(TOY, flow_share=0.7).stages()] == pytest.approx([0.7, 0.3])


# ------------------------------------------------------------------ reflow pairs


def test_pairs_are_noise_and_its_euler_image():
    m = RectifiedFlow(TOY, model_size="tiny", reflow_steps=4)
    m.net = LinearField(A2)
    pairs = m.on_stage_start("reflow", torch.zeros(37, 2), gen(4))  # no budget view: one pair per example
    assert pairs.shape == (37, 2, 2)
    z0 = torch.randn(37, 2, generator=gen(4))
    torch.testing.assert_close(pairs[:, 0], z0)
    M = np.linalg.matrix_power(np.eye(2) + A2 / 4, 4)
    torch.testing.assert_close(pairs[:, 1].double(), z0.double() @ torch.tensor(M).T, rtol=1e-5, atol=1e-5)
    assert m.on_stage_start("flow", torch.zeros(5, 2), gen(4)) is None
    capped = RectifiedFlow(TOY, model_size="tiny", max_pairs=7)
    assert capped.on_stage_start("reflow", torch.zeros(37, 2), gen(4)).shape == (7, 2, 2)


@pytest.mark.parametrize("pair_share", [0.1, 0.3])
def test_pairs_are_sized_from_the_stage_allowance(pair_share):
    """Counted from outside (as the host counts it): the cost stays within pair_share of the
    reflow allowance, and the number of pairs uses most of it."""
    torch.manual_seed(0)
    m = RectifiedFlow(TOY, model_size="tiny", pair_share=pair_share)
    m.budget_view = view_for(SMOKE, m)
    allowance = m.budget_view.stage_flops["reflow"]
    pairs, mode = count_cost(m.on_stage_start, "reflow", torch.zeros(10, 2), gen(5), limit=allowance)
    assert mode.total <= pair_share * allowance
    # one pair's cost measured alone, then the pairs the share pays for at that rate
    _, one = count_cost(m._pairs, 1, gen(6))
    assert len(pairs) >= 0.9 * pair_share * allowance / one.total
    assert m.pair_report["pairs"] == len(pairs) and m.pair_report["flops"] <= pair_share * allowance


def test_pairs_that_cannot_be_paid_for_fail_with_one_line():
    m = RectifiedFlow(TOY, model_size="tiny")
    m.budget_view = dataclasses.replace(view_for(SMOKE, m), stage_flops={"flow": 1e3, "reflow": 1e3})
    with pytest.raises(MethodError, match="one reflow pair costs"):
        m.on_stage_start("reflow", torch.zeros(10, 2), gen())


def test_host_training_keeps_the_preparation_inside_its_allowance():
    ds = EightGaussians()
    budget = dataclasses.replace(SMOKE, train_flops={"toy2d": SMOKE.flops_for("toy2d") / 5})
    torch.manual_seed(0)
    m = RectifiedFlow(ds.spec(), model_size="tiny")
    flow, reflow = train(m, ds.split("train").x, budget, "toy2d", gen(0))  # AllowanceExceeded would raise
    assert (flow.name, reflow.name) == ("flow", "reflow") and reflow.steps >= 1
    assert 0 < reflow.prepare_flops <= 0.3 * reflow.flops_allowed
    assert reflow.flops <= reflow.flops_allowed and m.pair_report["pairs"] > 100
    # the record keeps the pair count (train.stages[*].notes)
    assert reflow.notes == m.pair_report and flow.notes == {}


# ------------------------------------------------------------------ samplers and straightness


@pytest.mark.parametrize("steps", [1, 5])
def test_euler_sampler_is_the_matrix_power(steps):
    m = RectifiedFlow(TOY, model_size="tiny")
    m.net = LinearField(A2)
    x = m.sample(8, "euler", steps, gen(7))
    z = torch.randn(8, 2, generator=gen(7)).double()
    M = np.linalg.matrix_power(np.eye(2) + A2 / steps, steps)
    torch.testing.assert_close(x.double(), z @ torch.tensor(M).T, rtol=1e-5, atol=1e-5)
    assert m.net.calls == steps
    m.net.calls = 0
    one = m.sample(8, "one-step", 1, gen(7))  # Z_1 = Z_0 + v(Z_0, 0), one call
    torch.testing.assert_close(one.double(), z @ torch.tensor(np.eye(2) + A2).T, rtol=1e-5, atol=1e-5)
    assert m.net.calls == 1


def test_straightness_of_known_fields():
    m = RectifiedFlow(TOY, model_size="tiny")
    m.net = LinearField(np.zeros((2, 2)), shift=1.5)  # constant field: straight paths
    assert m.straightness(100, gen(8), steps=10) == pytest.approx(0.0, abs=1e-10)
    # v(x, t) = x: Euler points z_k = (1+h)^k z_0, displacement ((1+h)^N - 1) z_0
    m.net = LinearField(np.eye(2))
    n, steps = 500, 50
    z0 = torch.randn(n, 2, generator=gen(9)).double()  # the draw the method makes (float32)
    h = 1 / steps
    coef = [((1 + h) ** steps - 1 - (1 + h) ** k) ** 2 for k in range(steps)]
    expected = float(z0.pow(2).sum(1).mean()) * sum(coef) / steps
    assert m.straightness(n, gen(9), steps=steps) == pytest.approx(expected, rel=1e-4)
    # and the continuous value for large N: 2 * (-(e-1)^2 + (e^2-1)/2) for 2-D unit noise
    continuous = 2 * (-(math.e - 1) ** 2 + (math.e**2 - 1) / 2)
    assert expected / float(z0.pow(2).sum(1).mean()) * 2 == pytest.approx(continuous, rel=0.05)


@pytest.mark.parametrize("solver", [{"likelihood_steps": 50},
                                    {"likelihood_steps": "auto", "likelihood_rtol": 1e-7, "likelihood_atol": 1e-7}],
                         ids=["rk4", "dopri5"])
def test_likelihood_of_a_linear_flow_is_the_gaussian_closed_form(solver):
    from scipy.linalg import expm

    m = RectifiedFlow(TOY, model_size="tiny", **solver)
    m.net = LinearField(A2)
    M = expm(A2)
    x = torch.randn(100, 2, generator=gen(10), dtype=torch.float64) @ torch.tensor(M).T
    expected = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                      torch.tensor(M @ M.T)).log_prob(x)
    torch.testing.assert_close(m.log_likelihood(x.float(), gen()).double(), expected, rtol=1e-4, atol=1e-4)
    assert m.likelihood == "exact" and RectifiedFlow(IMAGE, model_size="tiny").likelihood == "estimate"


# ------------------------------------------------------------------ errors and registration


def test_bad_input_fails_with_one_line_messages():
    for kw, match in ((dict(reflow="yes"), "reflow must be true or false"), (dict(flow_share=1.0), "flow_share must be in"),
                      (dict(pair_share=0), "pair_share must be in"), (dict(reflow_steps=0), "reflow_steps must be"),
                      (dict(max_pairs=0), "max_pairs must be"),
                      (dict(likelihood_steps=0), "likelihood_steps must be 'auto', 'adaptive' or a positive integer"),
                      (dict(likelihood_atol=-1.0), "likelihood_rtol and likelihood_atol must be positive")):
        with pytest.raises(ValueError, match=match):
            RectifiedFlow(TOY, **kw)
    m = RectifiedFlow(TOY, model_size="tiny")
    for nfe in (0, 1.5, True):
        with pytest.raises(MethodError, match="nfe must be a positive integer"):
            m.sample(2, "euler", nfe, gen())
    with pytest.raises(MethodError, match="Did you mean 'euler'"):
        m.sample(2, "eular", 3, gen())
    with pytest.raises(MethodError, match="expected inputs of shape"):
        m.log_likelihood(torch.zeros(3, 4), gen())


def test_registered_through_the_entry_point_with_its_claim():
    from gmbench.plugins import Registries

    reg = Registries()
    assert reg.methods.get("rectified-flow") is RectifiedFlow
    claim = reg.claims.get("rf-reflow-beats-1rf-one-step-toy2d-swd")
    assert (str(claim.a), str(claim.b)) == ("rectified-flow one-step@1", "rectified-flow[reflow=False] one-step@1")
    sampler = RectifiedFlow.describe()["samplers"][1]
    assert sampler["name"] == "one-step" and not sampler["adjustable_nfe"]


# ------------------------------------------------------------------ it learns (smoke budget)


def test_reflow_learns_and_straightens_at_smoke_budget():
    """Both labels learn; 2-rectified flow's one-step samples beat 1-rectified flow's (RF T1)
    and its paths are straighter."""
    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x[:2000]
    fit = torch.distributions.MultivariateNormal(train_x.mean(0), torch.cov(train_x.T))
    fit_swd = sliced_wasserstein(fit.sample((2000,)), test_x)
    prior_swd = sliced_wasserstein(torch.randn(2000, 2, generator=gen(3)), test_x)
    runs = {}
    for reflow in (True, False):
        torch.manual_seed(0)
        m = RectifiedFlow(ds.spec(), model_size=SMOKE.model_size, reflow=reflow)
        reports = train(m, train_x, SMOKE, "toy2d", gen(0))
        assert sum(r.flops for r in reports) <= SMOKE.flops_for("toy2d")
        swd = {nfe: sliced_wasserstein(m.sample(2000, "euler", nfe, gen(1)), test_x) for nfe in (1, 10)}
        runs[reflow] = (swd, m.straightness(1000, gen(2)))
    (two, s_two), (one, s_one) = runs[True], runs[False]
    for swd in (two[10], one[10], two[1]):
        assert swd < 0.7 * fit_swd and swd < 0.3 * prior_swd, (runs, fit_swd, prior_swd)
    assert two[1] < 0.5 * one[1], runs
    assert s_two < 0.2 * s_one, runs


# ------------------------------------------------------------------ the conformance kit


class TestRectifiedFlowConformance(MethodConformance):
    method = RectifiedFlow


class TestOneRectifiedFlowConformance(MethodConformance):
    method = RectifiedFlow
    hparams = {"reflow": False}


class TestRectifiedFlowConformanceImages(MethodConformance):
    method = RectifiedFlow
    dataset = "digits"
    hparams = {"likelihood_steps": 2, "reflow_steps": 2}


def test_straightness_is_a_record_metric_of_rectified_flow_only():
    from gmbench.metrics.base import EvalContext
    from gmbench_methods.flow_matching.rectified_flow import Straightness

    [metric] = RectifiedFlow.extra_metrics
    assert isinstance(metric, Straightness) and not metric.applies_to(EightGaussians())
    ds = EightGaussians()
    m = RectifiedFlow(ds.spec(), model_size="tiny")
    ctx = EvalContext(dataset=ds, n_samples=0, seed=3)
    got = metric.score_model(m, ctx)["straightness"]
    # the metric is the method's S(Z) on the metric's own seeded trajectories (1000 x 100 on toy2d)
    want = m.straightness(1000, torch.Generator().manual_seed(10_003), steps=100)
    assert got == pytest.approx(want) and math.isfinite(got)
    assert metric.fingerprint_fields(ctx) == {"trajectories": 1000, "steps": 100}
    # a flow whose field is constant along each path is straight: S = 0
    m.net = ConstantField()
    assert metric.score_model(m, ctx)["straightness"] == pytest.approx(0.0, abs=1e-9)  # float32 Euler sums


class ConstantField(nn.Module):
    def forward(self, x, t):
        return torch.ones_like(x)
