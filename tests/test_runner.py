"""Runner: matrix expansion, isolation of failures, records, resume, determinism."""

from __future__ import annotations

import json

import pytest

from gmbench.records import RecordError, RunSpec, load_record, load_records, write_record
from gmbench.registry import RegistryError
from gmbench.runner import expand, run_all, run_one

REQUIRED = {"method", "dataset", "budget", "seed", "status", "error", "train", "metrics", "cost", "provenance", "fingerprint"}


def test_expand_matches_methods_to_datasets_by_modality(fake_registries):
    reg = fake_registries()
    m = expand(reg, plugins="gaussfit,tinygan", datasets="8gaussians,digits", budget="tiny-test", seeds=[0, 1])
    got = {(s.method, s.dataset, s.seed) for s in m.specs}
    assert got == {("gaussfit", d, s) for d in ("8gaussians", "digits") for s in (0, 1)} | {
        ("tinygan", "8gaussians", s) for s in (0, 1)
    }
    assert [(a, b) for a, b, _ in m.skipped] == [("tinygan", "digits")]


def test_default_datasets_are_one_per_modality_and_all_is_every_embedded_one(fake_registries):
    reg = fake_registries()
    default = {s.dataset for s in expand(reg, plugins="gaussfit", budget="tiny-test").specs}
    assert default == {"8gaussians", "digits"}  # gaussfit does toy2d and images; synthlang is text
    every = {s.dataset for s in expand(reg, plugins="gaussfit", datasets="all", budget="tiny-test").specs}
    assert {"8gaussians", "checkerboard", "moons", "spirals", "rings", "digits"} <= every
    assert "mnist" not in every and "cifar10" not in every


def test_a_modality_without_a_marked_default_runs_every_embedded_dataset_of_it(fake_registries):
    from gmbench.data.toy2d import EightGaussians
    from gmbench.runner import default_datasets

    reg = fake_registries()
    assert "synthlang" in default_datasets(reg) and "moons" not in default_datasets(reg)
    EightGaussians.suite_default = False  # a registry whose toy2d datasets mark none
    try:
        toy = [d for d in default_datasets(reg) if reg.datasets.get(d).modality == "toy2d"]
    finally:
        EightGaussians.suite_default = True
    assert set(toy) == {"8gaussians", "checkerboard", "moons", "spirals", "rings"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(plugins="gausfit"), "Did you mean 'gaussfit'"),
        (dict(plugins="gaussfit", datasets="8gausians"), "Did you mean '8gaussians'"),
        (dict(plugins="gaussfit", budget="smok"), "Did you mean 'smoke'"),
    ],
)
def test_unknown_names_get_a_suggestion(fake_registries, kwargs, message):
    kwargs.setdefault("budget", "tiny-test")
    with pytest.raises(RegistryError, match=message):
        expand(fake_registries(), **kwargs)


def test_ok_record_has_every_field_and_is_written_atomically(fake_registries, tmp_path):
    reg = fake_registries()
    rec = run_one(RunSpec("gaussfit", "8gaussians", "tiny-test", 0), reg, tmp_path)
    assert rec["status"] == "ok", rec.get("error")
    assert REQUIRED <= set(rec)
    assert rec["train"]["flops"] <= rec["train"]["flops_allowed"]
    names = {e["name"] for e in rec["metrics"] if e.get("error") is None}
    assert {"swd", "sample_nll", "test_nll"} <= names
    nll = next(e for e in rec["metrics"] if e["name"] == "test_nll")
    assert nll["label"] == "exact" and nll["sampler"] is None
    assert rec["backbone"] and rec["backbone"] == reg.methods.get("gaussfit")(reg.datasets.get("8gaussians")().spec()).backbone()
    assert rec["provenance"]["threads"]["intra_op"] >= 1
    files = [f for f in tmp_path.iterdir() if f.name != ".locks"]  # .locks: the per-spec lock files
    assert [f.name for f in files] == [RunSpec("gaussfit", "8gaussians", "tiny-test", 0).filename]
    assert load_record(files[0]) == json.loads(json.dumps(rec))
    for key in ("gmbench_version", "git_revision", "torch_version", "device", "python"):
        assert rec["provenance"][key]


def test_failures_become_records_and_the_suite_goes_on(fake_registries, tmp_path):
    reg = fake_registries()
    m = expand(reg, plugins="broken-train,nan-loss,wrong-shape,nan-samples,gaussfit", datasets="8gaussians", budget="tiny-test")
    records = {r["method"]: r for r in run_all(m, reg, tmp_path)}
    assert records["gaussfit"]["status"] == "ok"
    assert records["broken-train"]["status"] == "failed"
    assert records["broken-train"]["error"] == "RuntimeError: injected failure in training_step"
    assert "nan" in records["nan-loss"]["error"]
    assert "shape (256, 3), expected (n, 2)" in records["wrong-shape"]["error"]
    assert "NaN" in records["nan-samples"]["error"]
    for r in records.values():
        assert "\n" not in (r["error"] or "")
    assert len(list(tmp_path.glob("*.json"))) == 5


def test_resume_skips_ok_runs_and_retries_failed_ones(fake_registries, tmp_path):
    reg = fake_registries()
    m = expand(reg, plugins="gaussfit,broken-train", datasets="8gaussians", budget="tiny-test")
    run_all(m, reg, tmp_path)
    seen = []
    run_all(m, reg, tmp_path, resume=True, on_record=lambda s, r, i, n: seen.append((s.method, r is None)))
    assert sorted(seen) == [("broken-train", False), ("gaussfit", True)]


def test_same_seed_same_numbers_other_seed_other_numbers(fake_registries, tmp_path):
    reg = fake_registries()

    def values(seed, sub):
        rec = run_one(RunSpec("tinygan", "8gaussians", "tiny-test", seed), reg, tmp_path / sub)
        return [(e["name"], e["value"]) for e in rec["metrics"]]

    assert values(0, "a") == values(0, "b")
    assert values(0, "a") != values(1, "c")


def test_corrupt_and_foreign_records_are_reported_not_fatal(tmp_path):
    spec = RunSpec("m", "d", "b", 0)
    write_record(tmp_path, spec, {"method": "m", "status": "ok"})
    (tmp_path / "broken.json").write_text('{"method": "m", "sta')
    (tmp_path / "other.json").write_text('{"hello": 1}')
    records, problems = load_records([tmp_path])
    assert len(records) == 1
    assert any("not valid JSON" in p for p in problems) and any("not a gmbench run record" in p for p in problems)
    with pytest.raises(RecordError, match="not valid JSON"):
        load_record(tmp_path / "broken.json")
    with pytest.raises(RecordError, match="no such results path"):
        load_records([tmp_path / "missing"])


def test_record_with_nan_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError):
        write_record(tmp_path, RunSpec("m", "d", "b"), {"method": "m", "status": "ok", "x": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_observer_hooks_see_start_and_finish(tmp_path):
    from gmbench import hookimpl
    from gmbench.plugins import Registries, make_plugin_manager
    from tests.plugins.fake_methods import FakePlugin, GaussianFit, TinyBudgetPlugin

    class Logger:
        def __init__(self):
            self.events = []

        @hookimpl
        def gmbench_run_start(self, spec):
            self.events.append(("start", spec.method))

        @hookimpl
        def gmbench_run_finish(self, record):  # a subset of the hook's arguments
            self.events.append(("finish", record["status"]))

    logger = Logger()
    pm = make_plugin_manager((FakePlugin(GaussianFit), TinyBudgetPlugin(), logger), load_entrypoints=False)
    run_one(RunSpec("gaussfit", "8gaussians", "tiny-test"), Registries(pm), tmp_path)
    assert logger.events == [("start", "gaussfit"), ("finish", "ok")]


def test_a_methods_own_metrics_are_scored_outside_the_fingerprint(fake_registries, tmp_path):
    from gmbench.metrics.base import Metric, MetricOutput
    from tests.plugins.fake_methods import GaussianFit

    class MeanNorm(Metric):  # a method-specific model metric (Method.extra_metrics)
        name, kind, modalities = "mean_norm", "model", ("toy2d",)
        outputs = (MetricOutput("mean_norm", "lower", "norm of the fitted mean"),)

        def applies_to(self, dataset):
            return False

        def score_model(self, method, ctx):
            return {"mean_norm": float(method.net["mu"].norm())}

    class GaussFitWithOwnMetric(GaussianFit):
        name = "gaussfit-own"
        extra_metrics = (MeanNorm(),)

    plain = run_one(RunSpec("gaussfit", "8gaussians", "tiny-test", 0), fake_registries(), tmp_path / "plain")
    own = run_one(RunSpec("gaussfit-own", "8gaussians", "tiny-test", 0), fake_registries(GaussFitWithOwnMetric),
                  tmp_path / "own")
    assert own["status"] == "ok", own["error"]
    [entry] = [e for e in own["metrics"] if e["name"] == "mean_norm"]
    assert entry["value"] is not None and entry["sampler"] is None and "label" not in entry  # not a likelihood
    assert own["method_metrics"] == {"mean_norm": {"version": "1"}}
    assert own["fingerprint"] == plain["fingerprint"]  # comparable with every other run on the data
    assert "mean_norm" not in {e["name"] for e in plain["metrics"]} and "method_metrics" not in plain
