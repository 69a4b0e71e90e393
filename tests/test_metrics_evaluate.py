"""evaluate(): bad samples become failed entries, skips and NaNs are recorded,
sampling cost is measured after a warm-up with its own generator, and every
metric's protocol fields reach the record's fingerprint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gmbench.data.digits import Digits
from gmbench.data.toy2d import EightGaussians
from gmbench.evaluate import eval_context, evaluate, metric_fingerprint_fields
from gmbench.method import Method, OptimizerSpec, SamplerInfo, Stage
from gmbench.metrics.base import Metric, MetricOutput, MetricSkipped
from gmbench.records import fingerprint
from tests.plugins.fake_methods import TINY_BUDGET


class Scripted(Method):
    """Samples whatever ``make(n)`` returns; logs every sample() call."""

    name = "scripted"
    family = "test"
    paper = "0000.00000"
    modalities = ("toy2d", "image")
    samplers = (SamplerInfo("a", adjustable_nfe=True), SamplerInfo("b", adjustable_nfe=False, default_nfe=1))
    likelihood = "none"

    def __init__(self, data, model_size="tiny", make=None, precision=None):
        super().__init__(data, model_size)
        self.lin = nn.Linear(1, 1)
        self.make = make or (lambda n, sampler, nfe: torch.zeros(n, *data.shape))
        self.calls = []
        if precision:
            self.sampling_precision = precision

    def modules(self):
        return {"lin": self.lin}

    def stages(self):
        return [Stage("s", (OptimizerSpec("o", ("lin",)),))]

    def training_step(self, stage, batch, step):
        return {"o": self.lin(batch.flatten(1)[:, :1]).sum()}

    def sample(self, n, sampler, nfe, generator):
        self.calls.append((n, sampler, nfe, generator.initial_seed()))
        return self.make(n, sampler, nfe)


class Const(Metric):
    name = "const"
    modalities = ("toy2d", "image")
    outputs = (MetricOutput("mean_value", "lower"),)

    def fingerprint_fields(self, ctx):
        return {"n": ctx.n_samples, "knob": ctx.options.get("knob", 1)}

    def score_samples(self, samples, ctx):
        return {"mean_value": float(samples.mean())}


class Skips(Metric):
    name = "skips"
    modalities = ("toy2d",)
    outputs = (MetricOutput("never", "lower"),)

    def score_samples(self, samples, ctx):
        raise MetricSkipped("needs weights this machine lacks")


class Nan(Metric):
    name = "nan"
    modalities = ("toy2d",)
    outputs = (MetricOutput("nan_value", "lower"),)

    def score_samples(self, samples, ctx):
        return {"nan_value": math.nan}


class Raises(Metric):
    name = "raises"
    modalities = ("toy2d",)
    outputs = (MetricOutput("boom", "lower"),)

    def score_samples(self, samples, ctx):
        raise RuntimeError("metric exploded\nsecond line")


def _run(method, dataset, metrics, **kw):
    return evaluate(method, dataset, TINY_BUDGET, metrics, seed=3, **kw)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda n, s, nfe: torch.full((n, 2), math.nan), "contain NaN or inf"),
        (lambda n, s, nfe: torch.zeros(n, 3), "expected (n, 2)"),
        (lambda n, s, nfe: "not a tensor", "must be a torch.Tensor"),
    ],
)
def test_bad_toy_samples_are_failed_entries_not_crashes(make, message):
    ds = EightGaussians()
    entries, costs = _run(Scripted(ds.spec(), make=make), ds, [Const()])
    assert entries and all(e["value"] is None and message in e["error"] for e in entries)
    assert costs == []
    assert all("\n" not in e["error"] for e in entries)


def test_out_of_range_images_fail_but_other_samplers_still_score():
    ds = Digits()

    def make(n, sampler, nfe):
        return torch.full((n, 1, 8, 8), 5.0) if sampler == "a" else torch.zeros(n, 1, 8, 8)

    entries, costs = _run(Scripted(ds.spec(), make=make), ds, [Const()])
    bad = [e for e in entries if e["sampler"] == "a"]
    good = [e for e in entries if e["sampler"] == "b"]
    assert len(bad) == len(TINY_BUDGET.nfe_grid) and all("far outside the data range" in e["error"] for e in bad)
    # scored against the test split (what boards report) and the validation split (what they choose on)
    assert [(e["split"], e["value"]) for e in good] == [("test", 0.0), ("val", 0.0)]
    assert [(c["sampler"], c["nfe"]) for c in costs] == [("b", 1)]


def test_nan_values_skips_and_exceptions_are_recorded_one_line_each():
    ds = EightGaussians()
    entries, _ = _run(Scripted(ds.spec()), ds, [Skips(), Nan(), Raises()])
    by = {e["metric"]: e for e in entries if e["sampler"] == "b"}
    assert by["skips"]["value"] is None and by["skips"]["skipped"] == "needs weights this machine lacks"
    assert "error" not in by["skips"]
    assert by["nan"]["value"] is None and "returned nan" in by["nan"]["error"]
    assert by["raises"]["error"] == "RuntimeError: metric exploded"


def test_cost_is_measured_after_a_warm_up_with_its_own_generator():
    ds = EightGaussians()
    m = Scripted(ds.spec(), precision="float64")
    entries, costs = _run(m, ds, [Const()])
    n = TINY_BUDGET.eval_samples["toy2d"]
    # cheapest settings first across samplers (an evaluation cut short still covers each sampler)
    grid = sorted([("a", nfe) for nfe in TINY_BUDGET.nfe_grid] + [("b", 1)], key=lambda s: s[1])
    assert [(c["sampler"], c["nfe"]) for c in costs] == grid
    # per grid point: warm-up (1 sample), latency (1 sample), then the n evaluation samples
    assert [c[0] for c in m.calls] == [1, 1, n] * len(grid)
    for i, (_, _, _, seed) in enumerate(m.calls[2::3]):
        assert seed == 3 * 1_000_003 + 101 * i + 17  # the evaluation stream does not depend on the warm-up
    assert all(m.calls[3 * i][3] != m.calls[3 * i + 2][3] for i in range(len(grid)))
    for c in costs:
        assert c["n"] == n and c["seconds"] > 0 and c["latency_s"] > 0
        assert c["samples_per_s"] == pytest.approx(n / c["seconds"])
        assert c["sampling_precision"] == "float64"
    assert all(e["sampling_precision"] == "float64" and e["seconds"] >= 0 for e in entries)


def test_sampling_precision_defaults_to_float32():
    ds = EightGaussians()
    _, costs = _run(Scripted(ds.spec()), ds, [Const()])
    assert {c["sampling_precision"] for c in costs} == {"float32"}


def test_metric_fingerprint_fields_carry_versions_and_protocol():
    ds = EightGaussians()
    ctx = eval_context(ds, TINY_BUDGET, seed=0)
    fields = metric_fingerprint_fields([Const()], ctx)
    assert fields == {"const": {"version": "1", "n": TINY_BUDGET.eval_samples["toy2d"], "knob": 1}}
    ctx2 = eval_context(ds, TINY_BUDGET, seed=0, options={"knob": 2})
    assert fingerprint(metric_fingerprint_fields([Const()], ctx2)) != fingerprint(fields)


class Copier(Scripted):
    """Samples jittered training images (a memoriser): valid, scorable samples."""

    name = "copier"

    def __init__(self, data, model_size="tiny"):
        super().__init__(data, model_size)
        self.lin = nn.Linear(data.dims, data.dims)  # ~15 steps of the tiny budget, not thousands

    def training_step(self, stage, batch, step):
        return {"o": self.lin(batch.flatten(1)).pow(2).mean()}

    def on_stage_start(self, stage, train_x, generator):
        self.train_x = train_x.clone()

    def sample(self, n, sampler, nfe, generator):
        self.calls.append((n, sampler, nfe, generator.initial_seed()))
        idx = torch.randint(0, len(self.train_x), (n,), generator=generator)
        return (self.train_x[idx] + 0.05 * torch.randn(self.train_x[idx].shape, generator=generator)).clamp(-1, 1)


class CopierPlugin:
    from gmbench import hookimpl

    @hookimpl
    def gmbench_register_methods(self, register):
        register(Copier)


def test_runner_record_fingerprint_includes_metric_fields(tmp_path):
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.records import RunSpec
    from gmbench.runner import run_one
    from tests.plugins.fake_methods import TinyBudgetPlugin

    reg = Registries(make_plugin_manager(extra_plugins=(CopierPlugin(), TinyBudgetPlugin()), load_entrypoints=False))
    rec = run_one(RunSpec("copier", "digits", "tiny-test", 0), reg, tmp_path / "out", cache_dir=str(tmp_path / "cache"))
    assert rec["status"] == "ok", rec.get("error")
    fid_fields = rec["fingerprint_fields"]["metrics"]["image_fidelity"]
    assert fid_fields["extractor"] == "gmbench-cnn" and len(fid_fields["weights_sha256"]) == 64
    assert rec["fingerprint"] == fingerprint(rec["fingerprint_fields"])
    fids = [e for e in rec["metrics"] if e["name"] == "fid"]
    assert fids and all(e["value"] > 0 for e in fids)
    inception = [e for e in rec["metrics"] if e["metric"] == "image_fidelity_inception"]
    assert inception and all(e["value"] is None and ("skipped" in e or "error" in e) for e in inception)
    cost = rec["cost"]
    assert cost["eval_seconds"] > 0 and cost["sampling"][0]["latency_s"] > 0
    assert cost["peak_memory"]["cpu_max_rss_mb"] > 0


def test_evaluation_cap_keeps_what_was_measured():
    """Settings reached before the cap keep their values; the rest say why they are missing."""
    import time

    ds = EightGaussians()
    m = Scripted(ds.spec())
    entries, costs = _run(m, ds, [Const()], deadline=time.monotonic() - 1)
    assert costs == []
    assert entries and all("evaluation cap" in e["error"] for e in entries if e["sampler"] is not None)
