"""The command line: listings, bad input as one-line errors, a real smoke run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gmbench.cli import main


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_plugins_list_json_names_family_paper_distribution():
    res = _invoke("plugins", "list", "--json")
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["ddpm"]["family"] == "diffusion" and rows["ddpm"]["paper"] == "arXiv:2006.11239"
    assert rows["mdlm"]["modalities"] == ["text"] and rows["mdlm"]["likelihood"] == "bound"
    assert rows["vae"]["distribution"] == "gmbench"
    assert {s["name"] for s in rows["ddpm"]["samplers"]} == {"ancestral", "ancestral-tilde", "ddim", "ddim-eta1"}


def test_datasets_and_budgets_lists():
    ds = {r["name"]: r for r in json.loads(_invoke("datasets", "list", "--json").output)}
    assert ds["digits"]["embedded"] and not ds["mnist"]["embedded"]
    assert ds["synthlang"]["modality"] == "text"
    budgets = {r["name"]: r for r in json.loads(_invoke("budgets", "list", "--json").output)}
    assert set(budgets) >= {"smoke", "small", "standard", "large"}
    assert budgets["small"]["train_flops"]["toy2d"] > budgets["smoke"]["train_flops"]["toy2d"]
    text = _invoke("budgets", "list").output
    assert "smoke" in text and "nfe_grid" in text


def test_budgets_list_shows_the_training_cap_each_modality_runs_under(monkeypatch):
    from gmbench.budget import SMOKE

    # smoke states no cap: each modality's is derived from its own FLOPs (a toy2d run stops at
    # 200 s, not at the image cap); the listing gives them before $GMBENCH_CAP_SCALE
    monkeypatch.setenv("GMBENCH_CAP_SCALE", "4")
    assert SMOKE.train_cap_for("toy2d") == 4 * SMOKE.base_train_cap_for("toy2d")
    smoke = {r["name"]: r for r in json.loads(_invoke("budgets", "list", "--json").output)}["smoke"]
    assert smoke["train_cap_s"] == {m: SMOKE.base_train_cap_for(m) for m in SMOKE.train_flops}
    assert smoke["train_cap_s"]["toy2d"] < smoke["train_cap_s"]["image"]
    line = next(line for line in _invoke("budgets", "list").output.splitlines() if line.startswith("smoke"))
    caps = ", ".join(f"{m} {SMOKE.base_train_cap_for(m):.0f}" for m in SMOKE.train_flops)
    assert f"{caps} (derived, CPU)" in line


def test_bad_names_are_one_line_errors(tmp_path):
    for args, needle in [
        (["run", "--plugins", "dpm", "--out", str(tmp_path)], "Did you mean 'ddpm'"),
        (["run", "--plugins", "ddpm", "--datasets", "moon", "--out", str(tmp_path)], "Did you mean 'moons'"),
        (["run", "--plugins", "ddpm", "--budget", "tiny", "--out", str(tmp_path)], "unknown budget 'tiny'"),
        (["run", "--plugins", "mdlm", "--datasets", "digits", "--out", str(tmp_path)],
         "mdlm does not support image data (it supports text)"),
        (["run", "--seeds", "a,b", "--out", str(tmp_path)], "comma-separated integers"),
    ]:
        res = CliRunner().invoke(main, args)
        assert res.exit_code != 0, args
        assert needle in res.output, res.output
        assert "Traceback" not in res.output
        # click may print its usage lines first; the error itself is one line
        assert sum(needle in line for line in res.output.splitlines()) == 1


def test_hub_dataset_offline_fails_fast_as_a_failed_record(tmp_path, monkeypatch):
    """Through the runner (the API, and every executor) an uncached hub dataset is a failed record;
    the CLI stops before that with one line (tests/test_cli_checks.py)."""
    from gmbench.plugins import Registries
    from gmbench.runner import expand, run_all

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    reg = Registries()
    (rec,) = run_all(expand(reg, plugins="vae", datasets="mnist", budget="smoke"), reg, tmp_path)
    assert rec["status"] == "failed"
    assert "needs a download" in rec["error"] and "digits" in rec["error"]
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["status"] == "failed"
    res = CliRunner().invoke(main, ["run", "--plugins", "vae", "--datasets", "mnist", "--budget", "smoke",
                                    "--out", str(tmp_path / "cli")])
    assert res.exit_code == 1 and "needs a download" in res.output and not (tmp_path / "cli").exists()


def test_run_smoke_end_to_end_and_resume(tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "[1/1] ddpm on 8gaussians seed 0: ok" in res.output
    assert "ranked by swd" in res.output
    again = CliRunner().invoke(main, ["run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke", "--out", str(out), "--resume"])
    assert "1 run(s) already have an ok record" in again.output and "kept and skipped" in again.output
    assert "already done (ok record kept; --force re-runs it)" in again.output
    assert again.output.strip().splitlines()[-1] == "gmbench: 0 ok, 0 failed, 0 incomplete, 0 skipped (running elsewhere), 1 already done"


def test_set_parses_method_hyperparameters():
    import click
    import pytest

    from gmbench.cli.run import _apply_settings, _parse_settings
    from gmbench.records import RunSpec

    got = _parse_settings(["vae.iw_samples=64", "vae.decoder_std=shared", "ddpm.sigma2=beta_tilde"], {"vae", "ddpm"})
    assert got == {"vae": {"iw_samples": 64, "decoder_std": "shared"}, "ddpm": {"sigma2": "beta_tilde"}}
    (spec,) = _apply_settings([RunSpec("vae", "digits", "smoke")], got)
    assert dict(spec.hparams) == {"iw_samples": 64, "decoder_std": "shared"}
    assert spec.spec_hash != RunSpec("vae", "digits", "smoke").spec_hash  # a setting is a different run
    for bad in ("vae.iw_samples", "iw_samples=3", "gan.lr=1"):
        with pytest.raises(click.BadParameter):
            _parse_settings([bad], {"vae"})


def test_ctrl_c_exits_130_with_one_line_saying_resume_continues(tmp_path, monkeypatch):
    """Not click's "Aborted!" with exit 1, which the README reserves for bad input."""
    import gmbench.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gmbench.runner, "run_all", interrupted)
    res = CliRunner().invoke(main, ["run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output and "--resume" in res.output and "Aborted" not in res.output


@pytest.mark.parametrize("option, value", [("--grace", "-5"), ("--cpus-per-run", "0"), ("--gpus-per-run", "-1"),
                                           ("--memory-cap-mb", "0")])
def test_out_of_range_executor_options_stop_before_anything_starts(tmp_path, option, value):
    res = CliRunner().invoke(main, ["run", "--plugins", "vae", "--datasets", "8gaussians", "--budget", "smoke",
                                    "--out", str(tmp_path), option, value])
    assert res.exit_code == 2 and "not in the range" in res.output and option in res.output
    assert not any(tmp_path.iterdir())  # nothing was run
