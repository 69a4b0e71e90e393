"""Noise floors (gmbench.floor, `gmbench floor`): real data scored like samples, shown unranked."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from gmbench.cli import main
from gmbench.floor import TRAIN_VS_TEST, TRUE_DISTRIBUTION, FloorError, floor_kind, floor_record, floor_samples
from tests.test_leaderboard import TinyBudgetPlugin, cells, table_rows


@pytest.fixture(scope="module")
def reg():
    from gmbench.plugins import Registries

    return Registries()


def test_floor_of_8gaussians_scores_swd_near_the_known_floor(reg):
    rec = floor_record(reg, "8gaussians", "smoke", 0)
    assert (rec["status"], rec["source"], rec["method"]) == ("ok", "reference", "floor")
    assert rec["reference"]["label"] == TRUE_DISTRIBUTION and rec["reference"]["n"] == 1000
    swd = {e["name"]: e for e in rec["metrics"]}["swd"]
    assert (swd["sampler"], swd["nfe"], swd["split"]) == (None, None, "test")
    # two draws of 1,000 points from the same density are ~0.1-0.2 apart in SWD (seed spread ~0.02-0.05):
    # not 0 (the metric's own noise) and far below a poor model (docs/metrics.md)
    assert 0.08 < swd["value"] < 0.25
    values = {e["name"]: e["value"] for e in rec["metrics"] if e.get("value") is not None}
    assert values["off_support"] == 0.0 and values["mode_coverage"] == 1.0


def test_a_true_distribution_floor_carries_the_exact_test_likelihood_and_train_vs_test_none(reg):
    """The density is known on toy2d and synthlang: the floor's likelihood is the data's own, on the
    very test examples the likelihood metric scores a method on (its first max_examples)."""
    from gmbench.data import make_dataset
    from gmbench.metrics.likelihood import HeldOutLikelihood

    toy = floor_record(reg, "8gaussians", "smoke", 0)
    test = make_dataset(reg.datasets, "8gaussians").split("test").x[: HeldOutLikelihood.max_examples]
    truth = -float(make_dataset(reg.datasets, "8gaussians").log_prob(test).double().mean())
    nll = {e["name"]: e for e in toy["metrics"]}["test_nll"]
    assert toy["likelihood"] == "exact" and (nll["label"], nll["split"], nll["metric"]) == ("exact", "test", "likelihood")
    assert nll["value"] == pytest.approx(truth, abs=1e-6) and 3.3 < truth < 3.7  # log 8 + 1 + log(2 pi 0.25) = 3.53
    assert floor_record(reg, "8gaussians", "smoke", 1)["metrics"][-1]["value"] == nll["value"]  # fixed test points
    text = {e["name"]: e for e in floor_record(reg, "synthlang", "smoke", 0)["metrics"]}
    assert text["test_bpc_gap"]["value"] == 0.0 and text["test_bpc"]["label"] == "exact"
    assert text["entropy_rate_gap_bpc"]["value"] > 0  # short windows cost a little more than the rate
    image = floor_record(reg, "digits", "smoke", 0)
    assert image["likelihood"] == "none" and not [e for e in image["metrics"] if e["metric"] == "likelihood"]


def test_a_toy_set_that_can_only_be_sampled_has_a_floor_without_a_likelihood():
    """A Toy2D subclass without log_prob (a plugin's) is still a true-distribution floor, but its density is
    unknown: no likelihood entry (not an AttributeError in the record), likelihood 'none'."""
    from gmbench import hookimpl
    from gmbench.data.toy2d import Toy2D
    from gmbench.plugins import Registries, make_plugin_manager

    class Blob(Toy2D):
        name = "blob-sampled"

        def sample(self, n, generator):
            return torch.randn(n, 2, generator=generator)

    class BlobPlugin:
        @hookimpl
        def gmbench_register_datasets(self, register):
            register(Blob)

    rec = floor_record(Registries(make_plugin_manager(extra_plugins=(BlobPlugin(),), load_entrypoints=False)),
                       "blob-sampled", "smoke", 0)
    assert rec["status"] == "ok" and rec["reference"]["label"] == TRUE_DISTRIBUTION
    assert rec["likelihood"] == "none" and not [e for e in rec["metrics"] if e["metric"] == "likelihood"]
    # the toy sample metrics still score what needs no density, and say why the rest is missing
    by_name = {e["name"]: e for e in rec["metrics"] if e["metric"] == "toy2d_samples"}
    assert by_name["swd"]["value"] > 0 and "error" not in by_name["swd"]
    assert by_name["sample_nll"]["value"] is None and "gives no log_prob" in by_name["sample_nll"]["skipped"]
    assert by_name["off_support"]["value"] is None and "error" not in by_name["off_support"]


def test_floor_samples_are_fresh_seeded_draws_or_a_train_subset(reg):
    from gmbench.data import make_dataset

    toy = make_dataset(reg.datasets, "8gaussians")
    a, b = floor_samples(toy, 500, 0), floor_samples(toy, 500, 1)
    assert a.shape == (500, 2) and torch.equal(a, floor_samples(toy, 500, 0)) and not torch.equal(a, b)
    for split in ("train", "val", "test"):  # a fresh draw, not a split
        assert not torch.equal(a, toy.split(split).x[:500])
    lang = make_dataset(reg.datasets, "synthlang")
    words = floor_samples(lang, 8, 0)
    assert words.shape == (8, lang.seq_len) and words.dtype == torch.int64
    assert torch.isfinite(lang.log_prob(words)).all()  # the true source can produce every window
    digits = make_dataset(reg.datasets, "digits")
    sub = floor_samples(digits, 100, 0)
    train = digits.split("train").x
    assert all((train == row).flatten(1).all(1).any() for row in sub)  # every example is a train image
    assert (floor_kind(toy), floor_kind(lang), floor_kind(digits)) == (TRUE_DISTRIBUTION, TRUE_DISTRIBUTION, TRAIN_VS_TEST)
    with pytest.raises(FloorError, match="holds .* examples; the budget scores 100000"):
        floor_samples(digits, 100_000, 0)


def test_board_shows_the_floor_unranked_beside_real_runs(tmp_path):
    """Runner records and floor records share one fingerprint, so they stand on one board."""
    from gmbench.leaderboard import write_leaderboards
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.records import load_records
    from gmbench.runner import expand, run_all
    from tests.plugins.fake_methods import FakePlugin, GaussianFit

    reg = Registries(make_plugin_manager(extra_plugins=(FakePlugin(GaussianFit), TinyBudgetPlugin()),
                                         load_entrypoints=False))
    run_all(expand(reg, "gaussfit", "8gaussians", "lb-tiny", seeds=(0, 1)), reg, tmp_path / "runs")
    records, _ = load_records([tmp_path / "runs"])
    floors = [floor_record(reg, "8gaussians", "lb-tiny", seed) for seed in (0, 1)]
    assert {r["fingerprint"] for r in records} == {f["fingerprint"] for f in floors}
    write_leaderboards(records + floors, tmp_path / "lb", reg, allow_dirty=True)  # the checkout may be dirty
    page = (tmp_path / "lb" / "8gaussians__lb-tiny.md").read_text()
    rows = [cells(r) for r in table_rows(page, "#")[2:]]
    assert [(r[0], r[1]) for r in rows] == [("—", TRUE_DISTRIBUTION), ("1", "gaussfit")]
    assert rows[0][2].endswith("(n=2)") and rows[0][-1] == "reference (unranked)"
    header = cells(table_rows(page, "#")[0])
    assert rows[0][header.index("likelihood")].endswith("test\\_nll, exact")  # the true density's own
    assert "best test likelihood any model can expect" in page
    assert "Noise-floor rows score real data exactly like a method's samples" in page
    assert "| gaussfit" in (tmp_path / "lb" / "index.md").read_text()  # the leader is the method, never the floor


def test_floor_command_writes_records_and_refuses_unknown_names(tmp_path):
    res = CliRunner().invoke(main, ["floor", "--datasets", "8gaussians", "--budget", "smoke", "--seeds", "0",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    (path,) = (tmp_path / "out").glob("floor__8gaussians__smoke__s0__*.json")
    rec = json.loads(path.read_text())
    assert rec["source"] == "reference" and f"swd {next(e['value'] for e in rec['metrics'] if e['name'] == 'swd'):.4g}" in res.output
    for args, message in ((["--datasets", "8gaussians,nowhere"], "unknown dataset 'nowhere'"),
                          (["--datasets", "8gaussians", "--budget", "smok"], "unknown budget 'smok'")):
        res = CliRunner().invoke(main, ["floor", *args, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()  # names are checked before anything is written
