"""The host's training loop: optimizers per stage, alternating updates,
two-stage budgets, FLOP metering and enforcement, NaN and clock guards."""

from __future__ import annotations

import pytest
import torch

from gmbench.budget import BudgetExceeded, StepMeter, count_flops
from gmbench.data.toy2d import EightGaussians
from gmbench.method import MethodError
from gmbench.training import TrainingFailed, train
from tests.plugins.fake_methods import TINY_BUDGET, GaussianFit, NaNLoss, TinyGAN, TwoStage


def _train(cls, budget=TINY_BUDGET, seed=0):
    ds = EightGaussians()
    torch.manual_seed(seed)
    m = cls(ds.spec())
    reports = train(m, ds.split("train").x, budget, "toy2d", torch.Generator().manual_seed(seed))
    return m, reports


def test_single_stage_stays_within_budget_and_uses_most_of_it():
    m, (report,) = _train(GaussianFit)
    allowed = TINY_BUDGET.flops_for("toy2d")
    per_step = report.flops / report.steps
    assert report.flops <= allowed
    assert report.steps == int(allowed // per_step)
    # the one matrix product, (64x2) @ (2x2), plus the element operations around it
    assert report.matmul_flops == pytest.approx(report.steps * 2 * 64 * 2 * 2)
    assert report.element_ops > 0 and report.flops == pytest.approx(report.matmul_flops + report.element_ops)
    assert m.steps_seen == list(range(report.steps))


def test_gan_steps_discriminator_before_generator_loss_is_computed():
    m, (report,) = _train(TinyGAN)
    assert report.steps >= 2
    assert [o for o, _ in m.order[:4]] == ["disc", "gen", "disc", "gen"]
    # the generator's loss was computed with the discriminator already updated
    for (o1, before), (o2, after) in zip(m.order[0::2], m.order[1::2]):
        assert (o1, o2) == ("disc", "gen") and before != after
    assert set(report.final_losses) == {"disc", "gen"}


def test_two_stage_shares_and_stage_preparation_are_metered():
    m, reports = _train(TwoStage)
    ae, latent = reports
    allowed = TINY_BUDGET.flops_for("toy2d")
    assert [r.name for r in reports] == ["autoencoder", "latent"]
    assert ae.flops <= 0.25 * allowed and latent.flops <= 0.75 * allowed
    # encoding 20000 points with a 2x2 linear layer: 2*20000*2*2 FLOPs (plus copying the
    # result), charged to the latent stage
    assert 2 * 20000 * 2 * 2 <= latent.prepare_flops <= 2 * 20000 * 2 * 2 + 20000 * 2 * 4
    assert latent.flops >= latent.prepare_flops
    assert m.stage_steps == {"autoencoder": ae.steps, "latent": latent.steps}
    assert m.stage_data["latent"].shape == (20000, 2)
    assert sum(r.flops for r in reports) <= allowed


def test_nan_loss_fails_the_run():
    with pytest.raises(TrainingFailed, match="nan at step 2"):
        _train(NaNLoss)


def test_budget_smaller_than_one_step_is_an_error():
    from dataclasses import replace

    tiny = replace(TINY_BUDGET, train_flops={"toy2d": 10.0})
    with pytest.raises(TrainingFailed, match="more than its allowance"):
        _train(GaussianFit, budget=tiny)


def test_stage_shares_must_sum_to_one():
    class Bad(TwoStage):
        def stages(self):
            return [s.__class__(s.name, s.optimizers, 0.5) for s in super().stages()][:1]

    with pytest.raises(MethodError, match="sum to 1"):
        _train(Bad)


def test_unknown_optimizer_in_step_is_a_contract_error():
    class Bad(GaussianFit):
        def training_step(self, stage, batch, step):
            return {"nope": super().training_step(stage, batch, step)["adam"]}

    with pytest.raises(MethodError, match="unknown optimizer 'nope'"):
        _train(Bad)


def test_count_flops_counts_a_matmul():
    _, flops = count_flops(torch.mm, torch.randn(3, 5), torch.randn(5, 7))
    assert flops == 2 * 3 * 5 * 7


class NotedTwoStage(TwoStage):
    """Says how its latent stage was prepared (``Method.stage_notes``)."""

    notes_to_give: object = None

    def stage_notes(self, stage):
        return self.notes_to_give if stage == "latent" else {}


def test_stage_notes_are_kept_in_the_stage_report():
    class Noted(NotedTwoStage):
        notes_to_give = {"pairs": 20000, "flops_per_pair": 4.0, "source": "encoder"}

    _, (ae, latent) = _train(Noted)
    assert ae.notes == {} and latent.notes == {"pairs": 20000, "flops_per_pair": 4.0, "source": "encoder"}
    assert latent.to_dict()["notes"] == latent.notes


def test_stage_end_notes_are_merged_into_the_preparation_notes():
    """Facts that accumulate over the steps (CPU work the meter cannot see) reach the record through
    stage_end_notes; stage_notes is asked once, after the preparation only (a method may build it
    from state on_stage_start set, which a resumed stage's process never has)."""

    class Timed(GaussianFit):
        def stage_notes(self, stage):
            assert not self.steps_seen, "stage_notes asked after the steps began"
            return {"source": "prepared", "steps_timed": 0}

        def stage_end_notes(self, stage):
            return {"steps_timed": len(self.steps_seen)}

    _, (report,) = _train(Timed)
    assert report.notes == {"source": "prepared", "steps_timed": report.steps} and report.steps > 1

    class BadEnd(GaussianFit):
        def stage_end_notes(self, stage):
            return [len(self.steps_seen)]

    with pytest.raises(MethodError, match=r"stage_end_notes\('fit'\) of 'gaussfit' must return a JSON-able dict") as err:
        _train(BadEnd)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [{"x": torch.tensor(1.0)}, [1, 2], "pairs"])
def test_stage_notes_that_are_not_a_json_dict_fail_in_one_line(bad):
    class Noted(NotedTwoStage):
        notes_to_give = bad

    with pytest.raises(MethodError, match="must return a JSON-able dict") as err:
        _train(Noted)
    assert "\n" not in str(err.value)
