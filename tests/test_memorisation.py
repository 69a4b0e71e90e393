"""The memorisation metric: copies of training data are flagged, held-out data is not."""

from __future__ import annotations

import pytest
import torch

from gmbench.data.digits import Digits
from gmbench.data.toy2d import EightGaussians
from gmbench.metrics import memorisation
from gmbench.metrics.base import EvalContext, MetricError
from gmbench.metrics.memorisation import COPY_FLAG, Memorisation, nn_distances
from gmbench.plugins import Registries, make_plugin_manager


def _copies(x: torch.Tensor, n: int, seed: int = 1) -> torch.Tensor:
    return x[torch.randint(len(x), (n,), generator=torch.Generator().manual_seed(seed))]


@pytest.fixture(scope="module")
def digits_ctx():
    return EvalContext(dataset=Digits(), n_samples=1000, seed=0)


def test_copied_digits_are_flagged_and_held_out_digits_are_not(digits_ctx):
    metric, ds = Memorisation(), digits_ctx.dataset
    copies = metric.compute(digits_ctx, samples=_copies(ds.split("train").x, 1000))["copy_share"]
    held_out = metric.compute(digits_ctx, samples=ds.split("test").x)["copy_share"]
    fresh = metric.compute(digits_ctx, samples=ds.split("val").x)["copy_share"]
    assert copies > COPY_FLAG and copies == pytest.approx(1.0)
    assert held_out < 0.15 and fresh < 0.15


def test_toy2d_copies_are_flagged_and_a_fresh_draw_is_not():
    ds = EightGaussians()
    ctx, metric = EvalContext(dataset=ds, n_samples=2000, seed=0), Memorisation()
    assert metric.compute(ctx, samples=_copies(ds.split("train").x, 2000))["copy_share"] > COPY_FLAG
    assert metric.compute(ctx, samples=ds.split("val").x[:2000])["copy_share"] < 0.15


def test_copy_share_is_the_share_of_copies():
    ds = EightGaussians()
    ctx = EvalContext(dataset=ds, n_samples=2000, seed=0)
    mixed = torch.cat([_copies(ds.split("train").x, 600), ds.split("val").x[:1400]])
    # 600 copies plus ~5% of 1400 fresh points
    assert Memorisation().compute(ctx, samples=mixed)["copy_share"] == pytest.approx(0.3 + 0.7 * 0.05, abs=0.03)


def test_exact_copies_are_at_distance_zero():
    # the |x|^2 + |y|^2 - 2xy shortcut would leave a float error here
    ref = 100 + torch.randn(3000, 128, generator=torch.Generator().manual_seed(0))
    assert nn_distances(ref[:700], ref).abs().max() == 0


def test_train_reference_is_capped_by_a_seeded_subset(monkeypatch):
    monkeypatch.setattr(memorisation, "TRAIN_MAX", 500)
    ds = EightGaussians()
    metric = Memorisation()
    ctx = EvalContext(dataset=ds, n_samples=100, seed=0)
    assert metric.fingerprint_fields(ctx)["train_n"] == 500
    train, _ = metric._reference(ctx)
    again, _ = metric._reference(EvalContext(dataset=ds, n_samples=100, seed=3))
    assert len(train) == 500 and torch.equal(train, again)  # the same subset for every run


def test_reference_is_computed_once_per_run(digits_ctx, monkeypatch):
    metric = Memorisation()
    calls = []
    real = metric.features
    monkeypatch.setattr(metric, "features", lambda x, ctx: calls.append(len(x)) or real(x, ctx))
    ctx = EvalContext(dataset=digits_ctx.dataset, n_samples=100, seed=0)
    samples = digits_ctx.dataset.split("test").x[:100]
    metric.compute(ctx, samples=samples)
    metric.compute(ctx, samples=samples)
    n_train = len(digits_ctx.dataset.split("train").x)
    assert calls.count(n_train) == 1 and calls.count(100) == 2


def test_registered_with_direction_and_fingerprint(digits_ctx):
    metric = Registries(make_plugin_manager(load_entrypoints=False)).metrics.get("memorisation")
    assert metric.output("copy_share").direction == "lower"
    fields = metric.fingerprint_fields(digits_ctx)
    assert fields["extractor"] == "gmbench-cnn" and fields["quantile"] == 0.05 and fields["train_max"] == 20000
    assert fields["test_leak_flag"] == 0.1 and metric.output("test_copy_excess").direction == "lower"
    text = Registries(make_plugin_manager(load_entrypoints=False)).datasets.get("synthlang")()
    assert metric.applies_to(text)  # exact copies of sequences
    assert metric.fingerprint_fields(EvalContext(dataset=text, n_samples=10, seed=0))["distance"] == "exact sequence match"


def test_no_samples_is_a_one_line_error():
    ctx = EvalContext(dataset=EightGaussians(), n_samples=0, seed=0)
    with pytest.raises(MetricError, match="at least one sample"):
        Memorisation().compute(ctx, samples=torch.zeros(0, 2))
