"""The host against cheating method plugins: a method never sees a held-out example before its
samples are drawn, samples that copy the held-out split fail the run, a likelihood better than
the data's own density is rejected, and a method that trains while it is evaluated fails.
(What an in-process plugin can still do is listed in docs/integrity.md.)"""

from __future__ import annotations

import torch
from torch import nn

from gmbench.data.toy2d import EightGaussians
from gmbench.metrics.base import EvalContext
from gmbench.evaluate import UNCOUNTED_PER_VALUE, check_counted_work, sampling_audit
from gmbench.method import SamplerInfo
from gmbench.metrics.memorisation import TEST_LEAK_FLAG, Memorisation
from gmbench.records import RunSpec
from gmbench.runner import run_one
from tests.plugins.fake_methods import GaussianFit

def _spec(method: str) -> RunSpec:
    return RunSpec(method, "8gaussians", "tiny-test", 0)


class OrderSpy(GaussianFit):
    """Honest, but logs the order of the host's calls and what log_likelihood is handed."""
    name = "order-spy"
    log: list = []

    def sample(self, n, sampler, nfe, generator):
        OrderSpy.log.append(("sample", None))
        return super().sample(n, sampler, nfe, generator)

    def log_likelihood(self, x, generator):
        OrderSpy.log.append(("likelihood", x.detach().cpu().clone()))
        return super().log_likelihood(x, generator)


class HeldOutCopier(GaussianFit):
    """Rebuilds the public held-out split and returns it as its samples."""
    name = "test-copier"

    def training_step(self, stage, batch, step):
        if not hasattr(self, "test"):  # rebuilt once, inside the metered budget
            self.test = EightGaussians().split("test").x
        return super().training_step(stage, batch, step)

    def sample(self, n, sampler, nfe, generator):
        return self.test[:n].to(self.device)  # a view: no work the sampling audit would see


class FakeLikelihood(GaussianFit):
    """Claims a log-likelihood far above what any model of the data can have."""
    name = "fake-likelihood"

    def log_likelihood(self, x, generator):
        return torch.full((len(x),), 100.0, device=x.device)


class TrainsWhileSampling(GaussianFit):
    """Takes gradient steps on its own samples' fit inside sample()."""
    name = "trains-while-sampling"

    def sample(self, n, sampler, nfe, generator):
        with torch.enable_grad():
            loss = self._nll(super().sample(n, sampler, nfe, generator).detach()).mean()
            loss.backward()
        with torch.no_grad():
            for p in self.net.values():
                p -= 1e-3 * p.grad
        return super().sample(n, sampler, nfe, generator)


class TrainsWhenBuilt(GaussianFit):
    """Fits itself to a rebuilt training set in __init__, outside the budget's meter."""
    name = "trains-when-built"

    def __init__(self, data, model_size="tiny"):
        super().__init__(data, model_size)
        x = EightGaussians().split("train").x
        opt = torch.optim.Adam(self.net.parameters(), lr=5e-2)
        for _ in range(50):
            opt.zero_grad()
            self._nll(x).mean().backward()
            opt.step()


class DriftSampler(GaussianFit):
    """Honest: after the Gaussian draw, ``nfe`` small steps of a network called as ``net(x)``."""
    name = "drift"
    samplers = (SamplerInfo("euler", adjustable_nfe=True, deterministic=False, default_nfe=10),)

    def __init__(self, data, model_size="tiny"):
        super().__init__(data, model_size)
        self.drift = nn.Sequential(nn.Linear(data.dims, 256), nn.Tanh(), nn.Linear(256, data.dims))

    def modules(self):
        return {**super().modules(), "drift": self.drift}

    def _step(self, x):
        return self.drift(x)

    def sample(self, n, sampler, nfe, generator):
        x = super().sample(n, sampler, nfe, generator).flatten(1)
        for _ in range(nfe):
            x = x + 1e-3 * self._step(x)
        return x.reshape(n, *self.data.shape)


class DriftAroundTheCounter(DriftSampler):
    """The same network, called through ``.forward``: no hook fires, so NFE reads 0."""
    name = "drift-uncounted"

    def _step(self, x):
        return self.drift.forward(x)


class DriftCountedOnlyAlone(DriftSampler):
    """Honest for one sample (the call the host audits), around the counter for a batch."""
    name = "drift-counted-alone"

    def _step(self, x):
        return self.drift(x) if len(x) == 1 else self.drift.forward(x)


def test_the_sampling_audit_splits_one_samples_flops_between_the_networks_and_the_rest():
    data = EightGaussians()
    method = DriftSampler(data.spec())
    audit = sampling_audit(method, "euler", 7, torch.Generator().manual_seed(0))
    per_call = 2 * (2 * 256 + 256 * 2)  # two matrix products of one example (the rest is bias, tanh)
    assert audit["calls"] == 7
    assert 7 * per_call <= audit["network_flops"] <= 7 * 2 * per_call
    assert 0 < audit["flops"] - audit["network_flops"] < 100  # the draw and the update rule
    cheat = sampling_audit(DriftAroundTheCounter(data.spec()), "euler", 7, torch.Generator().manual_seed(0))
    assert cheat["calls"] == 0 and cheat["network_flops"] == 0
    assert cheat["flops"] == audit["flops"]  # the same work, none of it inside a counted call


class TriesHalfPrecisionFirst(DriftSampler):
    """Honest: a first call that raises inside the network is caught, then it samples."""
    name = "drift-retries"

    def sample(self, n, sampler, nfe, generator):
        try:
            self.drift(torch.zeros(n, 3))  # the wrong width: raises inside the listed network
        except RuntimeError:
            pass
        return super().sample(n, sampler, nfe, generator)


class ListsItsBackboneToo(DriftSampler):
    """Honest: lists a wrapper and the backbone inside it (one call runs both)."""
    name = "drift-nested"

    def modules(self):
        return {**super().modules(), "wrapper": nn.Sequential(self.drift)}

    def _step(self, x):
        return self.modules()["wrapper"](x)


class LangevinOnAnEnergy(DriftSampler):
    """Honest: steps along the gradient of a listed energy network (autograd's backward)."""
    name = "langevin-energy"

    def _step(self, x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            energy = self.drift(x).pow(2).sum()
            (grad,) = torch.autograd.grad(energy, x)
        return -grad


def test_the_audit_is_not_fooled_by_honest_samplers_with_unusual_calls():
    spec, g = EightGaussians().spec(), torch.Generator
    retried = sampling_audit(TriesHalfPrecisionFirst(spec), "euler", 4, g().manual_seed(0))
    assert retried["calls"] == 5 and retried["network_flops"] > 0.9 * retried["flops"]  # the depth recovers
    nested = sampling_audit(ListsItsBackboneToo(spec), "euler", 4, g().manual_seed(0))
    assert nested["calls"] == 4  # one call of the wrapper, not two
    langevin = sampling_audit(LangevinOnAnEnergy(spec), "euler", 4, g().manual_seed(0))
    assert langevin["calls"] == 4 and langevin["network_flops"] > 0.9 * langevin["flops"]  # backward is network work

    class ReturnsAList(GaussianFit):
        def sample(self, n, sampler, nfe, generator):
            return [super().sample(n, sampler, nfe, generator)]

    listed = sampling_audit(ReturnsAList(spec), "direct", 1, g().manual_seed(0))
    assert listed["values"] is None
    check_counted_work(ReturnsAList(spec), "direct", listed)  # no verdict: check_samples rejects the type


def test_a_network_called_around_the_nfe_counter_fails_the_run(fake_registries, tmp_path):
    honest = run_one(_spec("drift"), fake_registries(DriftSampler), tmp_path / "honest")
    assert honest["status"] == "ok", honest.get("error")
    cells = honest["cost"]["sampling"]
    assert cells and all(c["nfe_counted"] == c["nfe"] for c in cells)
    assert all(c["network_flops_per_sample"] > 0.9 * c["flops_per_sample"] for c in cells)
    rec = run_one(_spec("drift-uncounted"), fake_registries(DriftAroundTheCounter), tmp_path / "cheat")
    assert rec["status"] == "failed"
    assert "outside the networks" in rec["error"] and "module(x)" in rec["error"] and "\n" not in rec["error"]
    rec = run_one(_spec("drift-counted-alone"), fake_registries(DriftCountedOnlyAlone), tmp_path / "alone")
    assert rec["status"] == "failed" and "for the evaluation batch" in rec["error"], rec.get("error")
    # a network-free sampler's own arithmetic stays under the allowance
    plain = sampling_audit(GaussianFit(EightGaussians().spec()), "direct", 1, torch.Generator().manual_seed(0))
    assert plain["calls"] == 0 and plain["flops"] < UNCOUNTED_PER_VALUE * plain["values"]


def test_every_sample_is_drawn_before_the_method_sees_a_test_example(fake_registries, tmp_path):
    OrderSpy.log.clear()
    rec = run_one(_spec("order-spy"), fake_registries(OrderSpy), tmp_path)
    assert rec["status"] == "ok", rec.get("error")
    kinds = [k for k, _ in OrderSpy.log]
    first = kinds.index("likelihood")
    assert "sample" in kinds[:first] and "sample" not in kinds[first:], kinds


def test_a_likelihood_curve_point_is_scored_on_validation_examples(tmp_path, monkeypatch):
    """Mid-training points must not hand the method test examples it could train on."""
    from gmbench.plugins import Registries, make_plugin_manager
    from tests.plugins.fake_methods import FakePlugin, TinyBudgetPlugin
    from tests.test_curve import CurveBudgetPlugin

    monkeypatch.setattr(EightGaussians, "primary_metric", "test_nll")
    reg = Registries(make_plugin_manager(extra_plugins=(FakePlugin(OrderSpy), TinyBudgetPlugin(), CurveBudgetPlugin()),
                                         load_entrypoints=False))
    OrderSpy.log.clear()
    rec = run_one(RunSpec("order-spy", "8gaussians", "tiny-curve", 0), reg, tmp_path)
    assert rec["status"] == "ok", rec.get("error")
    assert len(rec["curve"]) == 3 and all(p.get("value") is not None for p in rec["curve"]), rec["curve"]
    kinds = [k for k, _ in OrderSpy.log]
    first_sample, last_sample = kinds.index("sample"), len(kinds) - 1 - kinds[::-1].index("sample")
    during = [x for k, x in OrderSpy.log[:first_sample] if k == "likelihood"]
    after = torch.cat([x for k, x in OrderSpy.log[last_sample:] if k == "likelihood"])
    data = EightGaussians()
    test, val = data.split("test").x, data.split("val").x
    assert len(during) >= 3 and all(torch.equal(x, val[:len(x)]) for x in during)
    assert torch.equal(after, test[:len(after)])


def test_samples_that_copy_the_test_split_fail_the_run(fake_registries, tmp_path):
    rec = run_one(_spec("test-copier"), fake_registries(HeldOutCopier), tmp_path)
    assert rec["status"] == "failed"
    assert "copy the held-out test split" in rec["error"] and "\n" not in rec["error"]
    excess = [e["value"] for e in rec["metrics"] if e["name"] == "test_copy_excess" and e["split"] == "test"]
    assert excess and min(excess) > 0.9  # the measurements stay in the failed record


def test_test_copy_excess_is_near_zero_for_fresh_and_negative_for_training_data():
    data = EightGaussians()
    ctx = EvalContext(dataset=data, budget=None, seed=0, device=torch.device("cpu"), n_samples=2000)
    metric = Memorisation()
    fresh = metric.compute(ctx, samples=data.split("val").x[:2000])
    train_copies = metric.compute(ctx, samples=data.split("train").x[:2000])
    test_copies = metric.compute(ctx, samples=data.split("test").x[:2000])
    assert abs(fresh["test_copy_excess"]) < 0.03
    assert train_copies["test_copy_excess"] < 0 and train_copies["copy_share"] == 1.0
    assert test_copies["test_copy_excess"] > 0.9 > TEST_LEAK_FLAG


def test_text_copies_are_exact_sequence_matches():
    from gmbench.data.synthlang import SyntheticLanguage

    data = SyntheticLanguage(seq_len=16, n_train=2000, n_test=300)
    ctx = EvalContext(dataset=data, budget=None, seed=0, device=torch.device("cpu"), n_samples=300)
    metric = Memorisation()
    test = metric.compute(ctx, samples=data.split("test").x)
    train = metric.compute(ctx, samples=data.split("train").x[:300])
    fresh = metric.compute(ctx, samples=data.split("val").x[:300])
    assert test["test_copy_excess"] > 0.9
    assert train["copy_share"] == 1.0 and train["test_copy_excess"] <= 0.0
    assert abs(fresh["test_copy_excess"]) < 0.05


def test_a_likelihood_above_the_datas_own_density_is_rejected(fake_registries, tmp_path):
    rec = run_one(_spec("fake-likelihood"), fake_registries(FakeLikelihood), tmp_path)
    assert rec["status"] == "ok", rec.get("error")  # the samples are honest: only the likelihood goes
    (nll,) = [e for e in rec["metrics"] if e["metric"] == "likelihood"]
    assert nll["value"] is None and "above the data's own log-density" in nll["error"]
    # the honest Gaussian fit passes the same check
    rec = run_one(_spec("gaussfit"), fake_registries(), tmp_path / "honest")
    (nll,) = [e for e in rec["metrics"] if e["name"] == "test_nll"]
    true_nll = -float(EightGaussians().log_prob(EightGaussians().split("test").x[:len(EightGaussians().split("test").x)]).mean())
    assert nll["value"] is not None and nll["value"] > true_nll


def test_a_method_that_trains_while_it_is_evaluated_fails(fake_registries, tmp_path):
    rec = run_one(_spec("trains-while-sampling"), fake_registries(TrainsWhileSampling), tmp_path)
    assert rec["status"] == "failed"
    assert "changed its parameters during evaluation" in rec["error"]
    assert any(e["name"] == "swd" for e in rec["metrics"])  # the measurements stay in the failed record


def test_a_method_that_trains_when_it_is_built_fails(fake_registries, tmp_path):
    rec = run_one(_spec("trains-when-built"), fake_registries(TrainsWhenBuilt), tmp_path)
    assert rec["status"] == "failed"
    assert "while it was built" in rec["error"] and "train in training_step" in rec["error"]
    honest = run_one(_spec("gaussfit"), fake_registries(), tmp_path / "honest")
    assert honest["status"] == "ok" and 0 < honest["cost"]["profile"]["build_flops"] < 1e4
