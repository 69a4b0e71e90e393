"""Unified test likelihood: bits/dim with uniform dequantisation, bits/char with
gaps to the true source, nats for toy2d; exact/bound labels; no-likelihood skip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gmbench.data.digits import Digits
from gmbench.data.synthlang import SyntheticLanguage
from gmbench.data.toy2d import EightGaussians
from gmbench.evaluate import evaluate
from gmbench.method import Method, OptimizerSpec, SamplerInfo, Stage
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import STDERR, HeldOutLikelihood
from tests.plugins.fake_methods import TINY_BUDGET


class Oracle(Method):
    """log_likelihood from a function; samples zeros. For likelihood tests only."""

    name = "oracle"
    family = "test"
    paper = "0000.00000"
    modalities = ("toy2d", "image", "text")
    samplers = (SamplerInfo("direct", adjustable_nfe=False),)
    likelihood = "exact"

    def __init__(self, data, loglik, likelihood="exact"):
        super().__init__(data)
        self.loglik = loglik
        self.likelihood = likelihood
        self.lin = nn.Linear(1, 1)
        self.seen = []

    def modules(self):
        return {"lin": self.lin}

    def stages(self):
        return [Stage("s", (OptimizerSpec("o", ("lin",)),))]

    def training_step(self, stage, batch, step):
        return {"o": self.lin(batch.flatten(1)[:, :1].float()).sum()}

    def sample(self, n, sampler, nfe, generator):
        return torch.zeros(n, *self.data.shape, dtype=torch.long if self.data.modality == "text" else torch.float32)

    def log_likelihood(self, x, generator):
        self.seen.append(x)
        return self.loglik(x)


def _score(ds, method):
    return HeldOutLikelihood().score_model(method, EvalContext(dataset=ds, n_samples=0, seed=0))


def test_uniform_density_over_the_dequantised_bins_gives_log2_levels_bits_per_dim():
    ds = Digits()
    spec = ds.spec()
    delta = 2.0 / (spec.levels - 1)
    lo, hi = -1 - delta / 2, 1 + delta / 2  # the union of all pixel bins
    dims = spec.dims

    def uniform(x):
        inside = ((x >= lo) & (x <= hi)).flatten(1).all(1)
        ll = torch.full((len(x),), -dims * math.log(hi - lo), dtype=torch.float64)
        return torch.where(inside, ll, torch.full_like(ll, -math.inf))

    m = Oracle(spec, uniform)
    out = _score(ds, m)
    assert out["test_bpd"] == pytest.approx(math.log2(spec.levels), abs=1e-9)
    x = torch.cat(m.seen)
    # the dequantised data stays in its own bin and is not the raw grid
    test = ds.split("test").x
    assert (x - test).abs().max() <= delta / 2 + 1e-6 and (x - test).abs().mean() > delta / 8


def test_true_source_as_model_has_zero_bpc_gap_and_positive_rate_gap():
    ds = SyntheticLanguage(seq_len=32, n_train=10, n_test=400)
    out = _score(ds, Oracle(ds.spec(), ds.log_prob))
    true_bits = float(-ds.log_prob(ds.split("test").x).double().mean()) / (32 * math.log(2))
    assert out["test_bpc"] == pytest.approx(true_bits, rel=1e-9)
    assert out["test_bpc_gap"] == pytest.approx(0.0, abs=1e-9)
    # windows start mid-word: a perfect model pays a little more than the entropy rate
    assert 0 < out["entropy_rate_gap_bpc"] < 0.5
    assert out["entropy_rate_gap_bpc"] == pytest.approx(out["test_bpc"] - ds.entropy_rate_bits())


def test_toy2d_nll_is_in_nats_per_point():
    ds = EightGaussians()
    out = _score(ds, Oracle(ds.spec(), ds.log_prob))
    logp = ds.log_prob(ds.split("test").x[:2000]).double()
    expected = float(-logp.mean())
    # beside the value, the standard error of the mean over the test points (evaluate() moves it
    # into the entry's ``stderr``)
    assert out == {"test_nll": pytest.approx(expected, rel=1e-6),
                   STDERR: pytest.approx(float(logp.std()) / math.sqrt(2000), rel=1e-4)}


def test_labels_pass_through_and_methods_without_likelihood_are_skipped():
    ds = EightGaussians()
    bound = Oracle(ds.spec(), lambda x: ds.log_prob(x) - 1.0, likelihood="bound")
    entries, _ = evaluate(bound, ds, TINY_BUDGET, [HeldOutLikelihood()], seed=0)
    model = [e for e in entries if e["sampler"] is None]
    assert [(e["name"], e["label"]) for e in model] == [("test_nll", "bound")]
    none = Oracle(ds.spec(), ds.log_prob, likelihood="none")
    entries, _ = evaluate(none, ds, TINY_BUDGET, [HeldOutLikelihood()], seed=0)
    (e,) = [e for e in entries if e["sampler"] is None]
    assert e["value"] is None and "has no likelihood" in e["skipped"]


def test_non_finite_likelihood_is_an_error_entry():
    ds = EightGaussians()
    broken = Oracle(ds.spec(), lambda x: torch.full((len(x),), math.nan))
    entries, _ = evaluate(broken, ds, TINY_BUDGET, [HeldOutLikelihood()], seed=0)
    (e,) = [e for e in entries if e["sampler"] is None]
    assert e["value"] is None and "NaN or inf" in e["error"]


def test_fingerprint_states_the_dequantisation():
    ctx = EvalContext(dataset=Digits(), n_samples=0, seed=0)
    assert HeldOutLikelihood().fingerprint_fields(ctx) == {
        "split": "test", "max_examples": 2000, "dequantisation": "uniform", "levels": 17, "value_range": [-1.0, 1.0]
    }
