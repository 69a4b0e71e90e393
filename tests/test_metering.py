"""The FLOP meter cannot be dodged: probe methods that hide or change their work.

Each probe reproduces a hole a plugin author found (issues 9 and 16): a step that
does nine times the work after warm-up, work hidden in ``on_step_end`` or under
``torch.no_grad``, products written as broadcast-multiply-and-sum, and stage
preparation that runs past its allowance.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gmbench.budget import BudgetExceeded, StepMeter
from gmbench.data.toy2d import EightGaussians
from gmbench.flops import AllowanceExceeded, OpCostMode
from gmbench.training import train
from tests.plugins.fake_methods import TINY_BUDGET, GaussianFit, TwoStage

BUDGET = replace(TINY_BUDGET, train_flops={"toy2d": 5.0e8, "image": 5.0e8, "text": 5.0e8})
W = torch.randn(128, 128)


def _train(method, budget=BUDGET, seed=0, **kw):
    ds = EightGaussians()
    return train(method, ds.split("train").x, budget, "toy2d", torch.Generator().manual_seed(seed), **kw)


def _heavy(x: torch.Tensor) -> torch.Tensor:
    return (x @ W).sum()  # 2 * 128^3 = 4.2e6 FLOPs for a 128x128 input


class CostChangesAfterWarmUp(GaussianFit):
    """Nine times the work from step 20 onward (after the meter's exact first steps)."""

    name = "probe-cost-change"

    def training_step(self, stage, batch, step):
        reps = 1 if step < 20 else 9
        extra = sum(_heavy(torch.ones(128, 128)) for _ in range(reps)) * 0
        return {"adam": super().training_step(stage, batch, step)["adam"] + extra}


class HidesWorkInNoGrad(GaussianFit):
    name = "probe-no-grad"

    def training_step(self, stage, batch, step):
        with torch.no_grad():
            for _ in range(5):
                _heavy(torch.ones(128, 128))
        return super().training_step(stage, batch, step)


class HidesWorkInStepEnd(GaussianFit):
    name = "probe-step-end"

    def on_step_end(self, stage, step):
        for _ in range(5):
            _heavy(torch.ones(128, 128, requires_grad=True)).backward()


class ProductsAsBroadcast(GaussianFit):
    """The same 128x128 product as a broadcast multiply and a sum: invisible to a matmul counter."""

    name = "probe-broadcast"

    def training_step(self, stage, batch, step):
        x = torch.ones(128, 128)
        (x[:, :, None] * W[None, :, :]).sum(1)
        return super().training_step(stage, batch, step)


class PlainWithMatmul(GaussianFit):
    name = "probe-plain"

    def training_step(self, stage, batch, step):
        _heavy(torch.ones(128, 128))
        return super().training_step(stage, batch, step)


def _spec():
    return EightGaussians().spec()


def test_a_cost_change_after_warm_up_is_caught_by_an_audit():
    probe = CostChangesAfterWarmUp(_spec())
    with pytest.raises(BudgetExceeded, match="not the constant") as info:
        _train(probe)
    # the audit re-charged the unaudited steps at the higher cost, which passed the allowance
    assert "re-charged" in str(info.value)


def test_a_cost_change_within_budget_switches_to_counting_every_step():
    # a budget so large that re-charging still fits: the run goes on, counting every step
    probe = CostChangesAfterWarmUp(_spec())
    budget = replace(BUDGET, train_flops={"toy2d": 2.0e9, "image": 2.0e9, "text": 2.0e9})
    (report,) = _train(probe, budget=budget)
    assert report.flops_method.startswith("counted every step")
    assert report.counted_steps < report.steps  # the audits before the change were the cheap ones
    heavy = 9 * 2 * 128**3
    assert report.flops <= budget.flops_for("toy2d")
    # every step from the 20th on did the heavy work: the charge covers it
    assert report.flops >= (report.steps - 20) * heavy


def test_work_under_no_grad_is_charged():
    plain, hidden = PlainWithMatmul(_spec()), HidesWorkInNoGrad(_spec())
    (p,), (h,) = _train(plain), _train(hidden)
    per_step_p, per_step_h = p.flops / p.steps, h.flops / h.steps
    assert per_step_h > 4.5 * per_step_p  # five hidden products against one
    assert h.steps < p.steps / 4


def test_work_in_on_step_end_is_charged():
    (p,), (h,) = _train(PlainWithMatmul(_spec())), _train(HidesWorkInStepEnd(_spec()))
    # five forward products plus their backward (one gradient product each: W is constant)
    assert h.flops / h.steps > 9 * (p.flops / p.steps)


def test_broadcast_products_cost_what_the_matmul_costs():
    (p,), (b,) = _train(PlainWithMatmul(_spec())), _train(ProductsAsBroadcast(_spec()))
    per_p, per_b = p.flops / p.steps, b.flops / b.steps
    # 128^3 multiplications + 128^3 additions either way
    assert per_b == pytest.approx(per_p, rel=0.05)


def test_elementwise_and_reduction_ops_are_counted_per_element():
    mode = OpCostMode()
    with mode:
        a = torch.randn(10, 20)  # 200 draws
        b = a * 2  # 200
        b.sum()  # reads 200
        a.view(20, 10)  # a view: free
    assert mode.matmul_flops == 0 and mode.element_ops == 600


def test_gathers_cost_their_input_on_the_meter_and_their_output_in_the_sampling_audit():
    bank, idx = torch.randn(1000, 8), torch.tensor([3, 7])
    counts = {}
    for by_output in (False, True):
        mode = OpCostMode(audit=by_output)
        with mode:
            bank[idx]  # two rows
            torch.nn.functional.embedding(idx, bank)
            bank.index_select(0, idx)
        counts[by_output] = mode.element_ops
    assert counts[False] == 3 * 8000  # the meter's element rule: the largest input, unchanged
    assert counts[True] == 3 * 16  # the audit: the 16 values read


def test_the_audit_charges_an_expanded_view_its_storage_and_sums_backward_work():
    for audit, expected in ((False, 10**9), (True, 1)):
        mode = OpCostMode(audit=audit)
        with mode:
            torch.zeros(1).expand(10**9).sum()  # the decoy: a billion-element view of one number
        assert mode.element_ops - 1 == expected  # + the one zero written
    mode = OpCostMode(audit=True)
    x = torch.randn(100, requires_grad=True)
    with mode:
        y = (x * x).sum()
        before = mode.total
        torch.autograd.grad(y, x)
    assert mode.backward > 0 and mode.total - before - mode.backward == 1  # all but the seed gradient's one


def test_fused_torch_layers_are_charged_their_matrix_products():
    """nn.TransformerEncoderLayer's and nn.MultiheadAttention's inference fast paths are one op
    each: charged what their unfused (grad-enabled) paths are; an LSTM its gate products."""
    x = torch.randn(2, 8, 64)
    layers = {"encoder": torch.nn.TransformerEncoderLayer(64, 4, 256, batch_first=True).eval(),
              "attention": torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()}
    for name, layer in layers.items():
        charged = {}
        for grad in (False, True):
            mode = OpCostMode()
            with torch.set_grad_enabled(grad), mode:
                layer(x) if name == "encoder" else layer(x, x, x)
            charged[grad] = mode.total
        assert charged[False] == pytest.approx(charged[True], rel=0.1), (name, charged)
    lstm, mode = torch.nn.LSTM(64, 64, batch_first=True), OpCostMode()
    with torch.no_grad(), mode:
        lstm(x)
    assert mode.total >= 2 * 16 * (4 * 64 * 64 * 2)  # 16 steps of two (256 x 64) products


class GreedyPreparation(TwoStage):
    name = "probe-greedy-prep"

    def on_stage_start(self, stage, train_x, generator):
        if stage == "latent":
            while True:  # never stops on its own: the host must stop it at its allowance
                _heavy(torch.ones(128, 128))
        return super().on_stage_start(stage, train_x, generator)


def test_stage_preparation_is_stopped_at_its_allowance():
    with pytest.raises(AllowanceExceeded, match="preparation of stage 'latent' used more than its allowance"):
        _train(GreedyPreparation(_spec()), budget=TINY_BUDGET)


def test_methods_see_their_stage_allowances_before_preparing():
    seen = {}

    class Sizes(TwoStage):
        name = "probe-sizes"

        def on_stage_start(self, stage, train_x, generator):
            seen[stage] = self.budget_view.stage_flops[stage]
            return super().on_stage_start(stage, train_x, generator)

    _train(Sizes(_spec()), budget=TINY_BUDGET)
    total = TINY_BUDGET.flops_for("toy2d")
    assert seen == {"autoencoder": pytest.approx(0.25 * total), "latent": pytest.approx(0.75 * total)}


def test_audits_are_seeded_unpredictable_and_at_least_the_minimum():
    def audited(seed):
        meter = StepMeter(allowance=72.0 * 400, seed=seed, min_audits=8)
        net = torch.nn.Linear(4, 4)
        counted = []
        while meter.steps == 0 or meter.total + meter.next_step_cost <= meter.allowance:
            if meter._must_count():
                counted.append(meter.steps)
            with meter.step():
                net(torch.ones(2, 4))  # 72 FLOPs + element ops, every step the same
        return meter, counted

    (a, steps_a), (b, steps_b), (c, steps_c) = audited(0), audited(0), audited(1)
    assert a.steps == 400 and a.planned_audits == 8  # 64 matmul FLOPs + 8 bias additions a step
    warm_up, last = 3, [s for s in steps_a if s >= a.steps - 2]
    assert len(steps_a) == warm_up + 8 + len(last) and a.counted_steps == len(steps_a)
    assert steps_a == steps_b and a.total == b.total  # seeded: reproducible
    assert steps_a != steps_c  # ... and the schedule is not a fixed stride
    # one audit in each eighth of the remaining steps
    audits = [s for s in steps_a if warm_up <= s < a.steps - 2]
    block = (a.steps - warm_up) / 8
    assert [int((s - warm_up) // block) for s in audits] == list(range(8))
    assert "(3 first, 8 random audits, the last ones)" in a.method


def test_a_stage_stopped_early_reports_the_audits_it_made_not_those_planned():
    meter = StepMeter(allowance=72.0 * 400, seed=0, min_audits=8)
    net = torch.nn.Linear(4, 4)
    while meter.steps < 60:  # stopped (a wall-clock cap) far short of its 400 steps
        with meter.step():
            net(torch.ones(2, 4))
    assert meter.planned_audits == 8 and meter.audit_index < 8
    assert f"{meter.audit_index} of 8 planned random audits before it stopped" in meter.method


def test_constant_cost_extrapolation_equals_counting_every_step():
    x = torch.randn(8, 16)
    exact = StepMeter(allowance=1e12, exact_steps=10**9, max_warmup_steps=10**9)
    cheap = StepMeter(allowance=1e12)
    for meter in (exact, cheap):
        torch.manual_seed(0)
        net = torch.nn.Linear(16, 16)
        for _ in range(50):
            with meter.step():
                net(x).sum().backward()  # the first backward allocates .grad, later ones accumulate
    assert cheap.total == pytest.approx(exact.total) and cheap.counted_steps < exact.counted_steps


def test_the_step_that_may_be_the_last_is_counted_exactly():
    meter = StepMeter(allowance=100.0, seed=0)
    meter.constant, meter.steps, meter.total = 10.0, 3, 30.0
    assert not meter._must_count()  # 30 + 2*10 <= 100: room for more after this one
    meter.total = 85.0
    assert meter._must_count()
