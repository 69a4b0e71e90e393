"""The command line checks what it can before any work, and its exit codes mean something.

Each bad input is one line naming the culprit, and nothing is trained first (the runner is
replaced by one that fails the test if reached). Exit codes: 0 all ok, 1/2 bad input,
3 a run failed or is incomplete (`--allow-failures`: 0).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile

import pytest
from click.testing import CliRunner

from gmbench.cli import main
from gmbench.cli.checks import RUN_FAILED_EXIT, docstring_args, hparams_of, parse_seeds
from tests.test_leaderboard import make_record, standard_records, write


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def no_work(monkeypatch):
    """Any run reaching the runner fails the test: the checks must stop it first."""
    import gmbench.runner

    def boom(*a, **k):
        raise AssertionError("a run started before the input was checked")

    monkeypatch.setattr(gmbench.runner, "run_all", boom)


def one_line_error(res, needle: str) -> None:
    assert "Traceback" not in res.output, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.output.splitlines() if needle in line]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("Error"), res.output


# -- 1. exit codes --------------------------------------------------------------------------


def fake_run_all(statuses):
    """A runner that reports one record per spec with the given statuses, without training."""

    def run_all(matrix, reg, out_dir, resume=False, on_record=None, executor=None, force=False):
        os.makedirs(out_dir, exist_ok=True)  # as the runner does; the summary table reads it
        records = []
        for i, (spec, status) in enumerate(zip(matrix.specs, statuses), 1):
            rec = {"status": status, "error": f"boom {i}", "seed": spec.seed, "method": spec.method, "dataset": spec.dataset,
                   "train": {"budget_spent": 0.4, "stopped": "wall-clock cap", "seconds": 1.0, "steps": 3}}
            on_record(spec, rec, i, len(matrix.specs))
            records.append(rec)
        return records

    return run_all


@pytest.mark.parametrize("statuses, code", [
    (["ok", "ok"], 0),
    (["ok", "skipped"], 0),  # running in another process is not a failure
    (["ok", "failed"], RUN_FAILED_EXIT),
    (["incomplete", "ok"], RUN_FAILED_EXIT),
    (["failed", "failed"], RUN_FAILED_EXIT),
])
def test_run_exit_code_says_whether_every_run_finished_ok(tmp_path, monkeypatch, statuses, code):
    import gmbench.runner

    monkeypatch.setattr(gmbench.runner, "run_all", fake_run_all(statuses))
    res = invoke("run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--seeds", "2x",
                 "--out", tmp_path / "r")
    assert res.exit_code == code, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("gmbench: ") and f"{statuses.count('failed')} failed" in last, res.output
    if code:
        allowed = invoke("run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--seeds", "2x",
                         "--out", tmp_path / "r", "--allow-failures")
        assert allowed.exit_code == 0, allowed.output
        assert allowed.output.strip().splitlines()[-1] == last


def test_an_ok_run_with_errored_values_says_so_on_its_line(tmp_path, monkeypatch):
    import gmbench.runner

    def run_all(matrix, reg, out_dir, resume=False, on_record=None, executor=None, force=False):
        os.makedirs(out_dir, exist_ok=True)
        (spec,) = matrix.specs
        rec = {"status": "ok", "error": None, "seed": spec.seed, "method": spec.method, "dataset": spec.dataset,
               "train": {"budget_spent": 1.0, "stopped": "", "seconds": 1.0, "steps": 3},
               "metrics": [{"metric": "likelihood", "name": "test_nll", "sampler": None, "nfe": None, "value": None,
                            "error": "ValueError: log_likelihood returned NaN or inf"},
                           {"metric": "swd", "name": "swd", "sampler": "ddim", "nfe": 10, "value": 0.3}]}
        on_record(spec, rec, 1, 1)
        return [rec]

    monkeypatch.setattr(gmbench.runner, "run_all", run_all)
    res = invoke("run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert ("ok in 1.0s train, 3 steps; 1 metric value(s) errored, e.g. test_nll: ValueError: log_likelihood returned "
            "NaN or inf") in res.output


def test_a_sweep_where_every_run_failed_exits_3(tmp_path):
    # a folder whose "images" do not decode fails at once, without training: a real failed record
    (tmp_path / "images" / "a").mkdir(parents=True)
    for name in ("x.png", "y.png"):
        (tmp_path / "images" / "a" / name).write_text("not an image")
    res = invoke("run", "--plugins", "vae", "--datasets", f"imagefolder:{tmp_path / 'images'}", "--budget", "smoke",
                 "--out", tmp_path / "r")
    assert res.exit_code == RUN_FAILED_EXIT, res.output
    assert "FAILED" in res.output and "cannot identify image file" in res.output
    assert res.output.strip().splitlines()[-1].startswith("gmbench: 0 ok, 1 failed, 0 incomplete")


def test_run_help_documents_the_exit_codes():
    text = invoke("run", "--help").output
    assert "Exit status" in text and "--allow-failures" in text
    assert any(line.strip().startswith("3") and "failed or is incomplete" in line for line in text.splitlines()), text


def test_eval_exits_3_when_no_metric_scores_the_samples(tmp_path, monkeypatch):
    import numpy as np

    import gmbench.external

    def failed(*a, **k):
        return {"status": "failed", "error": "every metric failed", "samples": {"warnings": []}}

    monkeypatch.setattr(gmbench.external, "score_external", failed)
    samples = tmp_path / "s.npy"
    np.save(samples, np.zeros((10, 2), dtype=np.float32))
    res = invoke("eval", "--dataset", "8gaussians", "--samples", samples, "--out", tmp_path / "r")
    assert res.exit_code == RUN_FAILED_EXIT
    assert "no metric could score the samples: every metric failed" in res.output


# -- 2. checks before the work --------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--plugins", "vae", "--set", "vae.no_such_key=1"],
     "unknown hyper-parameter 'no_such_key' for vae. Known: backbone, decoder_std, iw_samples, latent_dim, lr, min_std, weight_decay"),
    (["--plugins", "vae", "--set", "vae.iw_sample=4"], "unknown hyper-parameter 'iw_sample' for vae. Did you mean 'iw_samples'?"),
    (["--plugins", "vae", "--set", "vae.lr=fast"], "vae.lr=fast: expected a float"),
    (["--plugins", "vae", "--set", "vae.iw_samples=2.5"], "vae.iw_samples=2.5: expected an int"),
    (["--plugins", "vae", "--set", "vae.latent_dim=big"], "vae.latent_dim=big: expected an int or null"),
    (["--plugins", "ddpm", "--set", "ddpm.clip_denoised=yes"], "ddpm.clip_denoised=yes: expected true or false"),
    (["--plugins", "vae", "--set", "vae.model_size=large"], "vae.model_size is set by the host"),
    (["--plugins", "vae", "--datasets", "8gaussians", "--set", "vae.iw_samples=-5"],
     "vae.iw_samples=-5: vae on 8gaussians cannot be built with it: MethodError: vae: iw_samples must be a positive integer"),
    (["--plugins", "vae", "--datasets", "8gaussians", "--set", "vae.lr=-1"],
     "optimizer 'adam' of stage 'train' gets learning rate -1; it must be a positive number"),
    (["--plugins", "vae", "--device", "gpu"], "unknown device 'gpu': use cpu, cuda, cuda:N or mps"),
    (["--plugins", "vae", "--datasets", "imagefolder:/no/such/dir"], "imagefolder:/no/such/dir: no such folder '/no/such/dir'"),
    (["--plugins", "mdlm", "--datasets", "textfile:/no/such.txt"], "textfile:/no/such.txt: no such file '/no/such.txt'"),
    (["--plugins", "vae", "--datasets", "imagefolder"], "imagefolder needs a folder: use imagefolder:/path"),
    (["--seeds", "-3x"], "'-3x': a count of seeds must be at least 1x"),
    (["--seeds", "0x"], "'0x': a count of seeds must be at least 1x"),
    (["--seeds", "1,-2"], "'1,-2': seed -2 is negative"),
    (["--seeds", "1.5"], "'1.5': give comma-separated integers >= 0"),
    (["--seeds", ","], "',': no seed given"),
    (["--plugins", "mdlm", "--datasets", "digits"], "mdlm does not support image data (it supports text)"),
    (["--plugins", "vae,mdlm", "--datasets", "digits"], "mdlm does not support image data (it supports text)"),
])
def test_bad_input_is_one_line_before_any_run(tmp_path, no_work, args, needle):
    res = invoke("run", "--budget", "smoke", "--out", tmp_path / "r", *args)
    assert res.exit_code in (1, 2), res.output
    one_line_error(res, needle)
    assert not (tmp_path / "r").exists()  # nothing was started, nothing written


def test_good_settings_of_every_type_pass_the_checks(tmp_path, monkeypatch):
    import gmbench.runner

    seen = {}

    def capture(matrix, *a, **k):
        seen["hparams"] = dict(matrix.specs[0].hparams)
        return []

    monkeypatch.setattr(gmbench.runner, "run_all", capture)
    res = invoke("run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--out", tmp_path,
                 "--set", "ddpm.lr=1", "--set", "ddpm.ema_decay=null", "--set", "ddpm.clip_denoised=false",
                 "--set", "ddpm.vlb_draws=3", "--set", "ddpm.sigma2=beta_tilde")
    assert res.exit_code == 0, res.output
    assert seen["hparams"] == {"lr": 1, "ema_decay": None, "clip_denoised": False, "vlb_draws": 3, "sigma2": "beta_tilde"}


def test_cuda_without_a_gpu_is_refused(tmp_path, no_work, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = invoke("run", "--plugins", "vae", "--budget", "smoke", "--out", tmp_path / "r", "--device", "cuda")
    one_line_error(res, "'cuda': no CUDA GPU is visible to torch here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    res = invoke("run", "--plugins", "vae", "--budget", "smoke", "--out", tmp_path / "r", "--device", "cuda:1")
    one_line_error(res, "'cuda:1': this machine has 1 CUDA device(s)")


def test_a_sweep_still_skips_unsupported_pairs_quietly(tmp_path, monkeypatch):
    """'all' methods on image data: mdlm is left out, as before; only explicit pairs are errors."""
    import gmbench.runner

    seen = {}
    monkeypatch.setattr(gmbench.runner, "run_all", lambda matrix, *a, **k: seen.setdefault("m", {s.method for s in matrix.specs}) and [])
    res = invoke("run", "--datasets", "digits", "--budget", "smoke", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "mdlm" not in seen["m"] and "vae" in seen["m"]


def test_seed_parsing():
    assert parse_seeds("3x") == [0, 1, 2]
    assert parse_seeds(" 2, 0,2 ") == [2, 0]


def test_plugins_show_lists_hyperparameters_with_types_defaults_and_docs():
    res = invoke("plugins", "show", "vae")
    assert res.exit_code == 0, res.output
    assert "--set vae.KEY=VALUE" in res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("iw_samples")]
    assert line.split()[1:3] == ["int", "1"] and "IWAE bound" in line
    rows = {r["name"]: r for r in json.loads(invoke("plugins", "show", "vae", "--json").output)}
    assert rows["lr"] == {"name": "lr", "type": "float", "default": 0.001, "doc": "Adam learning rate (encoder and decoder together)."}
    assert rows["latent_dim"]["type"] == "int | None" and rows["latent_dim"]["default"] is None
    assert "data" not in rows and "model_size" not in rows  # the host's arguments, not --set's
    bad = invoke("plugins", "show", "vea")
    assert bad.exit_code == 1 and "Did you mean 'vae'" in bad.output and "Traceback" not in bad.output


def test_docstring_args_and_kwargs():
    doc = """Thing.

    Args:
        alpha: first line
            continued here.
        beta (int): second.

    Returns:
        nothing
    """
    assert docstring_args(doc) == {"alpha": "first line continued here.", "beta": "second."}

    class Open:
        def __init__(self, data, model_size="small", gamma: float = 1.0, **kwargs):
            pass

    params, open_ended = hparams_of(Open)
    assert [p.name for p in params] == ["gamma"] and open_ended


# -- 3. output paths ------------------------------------------------------------------------


def test_out_under_a_file_fails_before_training(tmp_path, no_work):
    (tmp_path / "afile").write_text("x")
    res = invoke("run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--out", tmp_path / "afile" / "sub")
    assert res.exit_code == 2
    one_line_error(res, f"{tmp_path / 'afile'} is a file, not a directory")


@pytest.fixture
def unwritable(monkeypatch, tmp_path):
    """A directory that refuses new files (as a read-only mount would; root ignores chmod)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and os.path.realpath(dir).startswith(str(locked.resolve())):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return locked


def test_a_record_that_cannot_be_written_is_kept_in_the_fallback_folder(unwritable, tmp_path, monkeypatch, capsys):
    """The folder turned unwritable after the checks (a full disk, a remount): the result is not lost."""
    from gmbench.records import RunSpec, fallback_dir, load_record, write_record

    monkeypatch.setenv("GMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    spec = RunSpec("ddpm", "8gaussians", "smoke", 0)
    record = {"method": "ddpm", "status": "ok", "spec_hash": spec.spec_hash, "metrics": [], "note": "measured"}
    kept = write_record(unwritable, spec, record)
    assert kept == fallback_dir() / spec.filename == tmp_path / "cache" / "unsaved-records" / spec.filename
    assert load_record(kept)["note"] == "measured"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"could not write the record of ddpm on 8gaussians seed 0 to {unwritable}" in err[0]
    assert err[0].endswith(f"it is kept at {kept}")
    assert not list(unwritable.iterdir())  # and nothing half-written where it failed


@pytest.mark.parametrize("command", [
    ["run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke"],
    ["floor", "--datasets", "8gaussians", "--budget", "smoke"],
])
def test_unwritable_out_fails_before_any_work(unwritable, no_work, command):
    for out in (unwritable, unwritable / "new" / "deeper"):
        res = invoke(*command, "--out", out)
        assert res.exit_code == 2, res.output
        one_line_error(res, "not writable")
        assert "Permission denied" in res.output and not (unwritable / "new").exists()


def test_unwritable_out_in_eval_leaderboard_and_claims(unwritable, tmp_path):
    import numpy as np

    samples = tmp_path / "s.npy"
    np.save(samples, np.zeros((10, 2), dtype=np.float32))
    res = invoke("eval", "--dataset", "8gaussians", "--samples", samples, "--out", unwritable / "r")
    one_line_error(res, "not writable")
    results = write(tmp_path / "results", standard_records())
    res = invoke("leaderboard", results, "--out", unwritable / "boards")
    one_line_error(res, "not writable")
    res = invoke("claims", results, "--out", unwritable / "claims.md")
    one_line_error(res, "not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only-mode directories")
def test_really_unwritable_directory(tmp_path, no_work):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    res = invoke("run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--out", locked)
    one_line_error(res, "not writable")


# -- 4. malformed records -------------------------------------------------------------------


MALFORMED = [
    (lambda r: r["metrics"][-1].update(value="NaN"), "metric 'swd' has value 'NaN', not a number"),
    (lambda r: r.update(seed="zero"), "'seed' is 'zero', not an integer"),
    (lambda r: r["metrics"][-1].update(nfe="ten"), "metric 'swd' has nfe 'ten', not an integer"),
    (lambda r: r.update(status="done"), "'status' is 'done', not one of ok, failed, incomplete"),
    (lambda r: r.update(metrics={"swd": 1}), "'metrics' is not a list"),
    (lambda r: r.update(fingerprint={"x": 1}), "'fingerprint' is {'x': 1}, not a string"),
    (lambda r: r.update(cost="oops"), "'cost' is 'oops', not an object"),
    (lambda r: r.update(train="x"), "'train' is 'x', not an object"),
    (lambda r: r.update(provenance="x"), "'provenance' is 'x', not an object"),
    (lambda r: r.update(cost={"sampling": "x"}), "'cost.sampling' is not a list of objects"),
]


@pytest.mark.parametrize("spoil, needle", MALFORMED)
def test_malformed_record_is_exit_2_in_compare_and_leaderboard(tmp_path, spoil, needle):
    recs = standard_records()
    bad = [dict(r, metrics=[dict(e) for e in r["metrics"]]) for r in recs]
    target = next(r for r in bad if any(e["name"] == "swd" for e in r["metrics"]))
    target["metrics"].sort(key=lambda e: e["name"] == "swd")  # an swd entry last
    spoil(target)
    base = write(tmp_path / "base", recs)
    cur = write(tmp_path / "cur", bad)
    for args in (["compare", base, cur], ["compare", cur, base], ["leaderboard", cur, "--out", tmp_path / "lb"],
                 ["claims", cur]):
        res = invoke(*args)
        assert res.exit_code == 2, (args, res.output)
        one_line_error(res, needle)
        assert "malformed record of" in res.output
    assert not (tmp_path / "lb").exists()


def test_records_written_by_gmbench_pass_validation():
    from gmbench.leaderboard import validate_record

    for rec in standard_records() + [make_record("m", 1, {("swd", "s", 1): None}, status="failed", error="x")]:
        validate_record(rec)


def test_an_uncached_hub_dataset_offline_is_one_line_before_any_run(tmp_path, no_work, monkeypatch):
    import gmbench.data.hub as hub
    from gmbench.errors import DatasetUnavailableError

    opened = []

    def not_cached(label, path, split, **kwargs):
        opened.append((label, path, split))
        raise DatasetUnavailableError(f"dataset {label!r} ({path}) needs a download or a copy in the HuggingFace cache")

    monkeypatch.setattr(hub, "_load_hf", not_cached)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for name, plugins in (("mnist", "vae"), ("tiny_shakespeare", "mdlm")):
        res = invoke("run", "--plugins", plugins, "--datasets", name, "--budget", "smoke", "--out", tmp_path / "r")
        assert res.exit_code == 1, res.output
        one_line_error(res, f"dataset {name!r}")
    assert [o[0] for o in opened] == ["mnist", "tiny_shakespeare"] and {o[2] for o in opened} == {"train"}
    assert not (tmp_path / "r").exists()
    # a run already done needs no data: `--resume` over finished records is not stopped
    from gmbench.plugins import Registries
    from gmbench.records import write_record
    from gmbench.runner import expand, new_record

    (spec,) = expand(Registries(), plugins="vae", datasets="mnist", budget="smoke").specs
    write_record(tmp_path / "done", spec, {**new_record(spec), "status": "ok", "metrics": []})
    opened.clear()
    import gmbench.runner

    monkeypatch.setattr(gmbench.runner, "run_all", lambda *a, **k: [])  # it would skip the run as done
    res = invoke("run", "--plugins", "vae", "--datasets", "mnist", "--budget", "smoke", "--resume",
                 "--out", tmp_path / "done")
    assert res.exit_code == 0 and "already done" in res.output and opened == [], res.output
    # embedded data is never looked up in the hub cache
    opened.clear()
    res = invoke("run", "--plugins", "vae", "--datasets", "digits", "--budget", "smoke", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert opened == []


# -- 5. environment variables -----------------------------------------------------------------


@pytest.mark.parametrize("var, value, needle", [
    ("GMBENCH_CAP_SCALE", "abc", "$GMBENCH_CAP_SCALE='abc': give a positive number"),
    ("GMBENCH_CAP_SCALE", "-1", "$GMBENCH_CAP_SCALE='-1': give a positive number"),
    ("GMBENCH_CHECKPOINT_EVERY_STEPS", "abc", "$GMBENCH_CHECKPOINT_EVERY_STEPS='abc': give a positive whole number"),
    ("GMBENCH_CHECKPOINT_EVERY_STEPS", "0", "$GMBENCH_CHECKPOINT_EVERY_STEPS='0': give a positive whole number"),
])
def test_a_bad_environment_variable_is_one_line_before_anything_is_written(tmp_path, no_work, monkeypatch, var, value,
                                                                             needle):
    monkeypatch.setenv(var, value)
    out = tmp_path / "out"
    res = invoke("run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--out", out)
    assert res.exit_code == 1
    one_line_error(res, needle)
    assert not out.exists()
