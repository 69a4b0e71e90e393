"""Paper claims: definitions, verdicts on fake records, the `gmbench claims` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gmbench import hookimpl
from gmbench.claims import Cell, ClaimError, PaperClaim, check_claims
from gmbench.cli import main
from gmbench.plugins import Registries, make_plugin_manager
from gmbench.registry import RegistryError

DIRECTIONS = {"fid": "lower", "swd": "lower", "test_nll": "lower", "isc": "higher"}
DDIM, ANC = Cell("ddpm", "ddim"), Cell("ddpm", "ancestral")


def record(method, seed, values, dataset="digits", modality="image", hparams=None, status="ok", fp="fp0", budget="small"):
    """A minimal run record; ``values``: {(name, sampler, nfe): value} or {(name, sampler, nfe, split): value}."""
    metrics = []
    for key, v in values.items():
        name, sampler, nfe, *split = key
        e = {"name": name, "sampler": sampler, "nfe": nfe, "value": v, "metric": "m", "version": "1"}
        if split:
            e["split"] = split[0]  # None: an explicit "no split"
        metrics.append(e)
    return {"method": method, "dataset": dataset, "modality": modality, "budget": budget, "seed": seed,
            "status": status, "hparams": hparams or {}, "precision": "fp32", "source": "trained",
            "fingerprint": fp, "metrics": metrics, "finished_at": f"2026-11-30T00:00:0{seed}"}


def ddpm_runs(ddim, anc, nfe=10, **kw):
    """One ddpm record per seed with the given per-seed FIDs of both samplers."""
    return [record("ddpm", s, {("fid", "ddim", nfe): d, ("fid", "ancestral", nfe): a}, **kw)
            for s, (d, a) in enumerate(zip(ddim, anc))]


def better(name="ddim-wins", **kw):
    args = dict(name=name, statement="DDIM beats ancestral", relation="better", metric="fid", dataset="digits",
                a=DDIM.at(10), b=ANC.at(10), paper="2010.02502", table="DDIM T1")
    return PaperClaim(**{**args, **kw})


def verdicts(claims, records):
    return [(r.dataset, r.verdict) for r in check_claims(claims, records, DIRECTIONS)]


# -- verdicts ---------------------------------------------------------------------------


def test_holds_fails_inconclusive_untested():
    ddim, anc = [10.0, 12.0, 11.0], [20.0, 21.0, 23.0]
    assert verdicts([better()], ddpm_runs(ddim, anc)) == [("digits", "holds")]
    assert verdicts([better()], ddpm_runs(anc, ddim)) == [("digits", "fails")]
    # differences of both signs: not separable
    assert verdicts([better()], ddpm_runs([10.0, 12.0, 11.0], [11.0, 10.0, 11.5])) == [("digits", "inconclusive")]
    # no ddpm records at all, or none of cell B
    assert verdicts([better()], [record("vae", 0, {("fid", "prior", 1): 5.0})]) == [("-", "untested")]
    only_a = [record("ddpm", s, {("fid", "ddim", 10): 10.0 + s}) for s in range(3)]
    [res] = check_claims([better()], only_a, DIRECTIONS)
    assert res.verdict == "untested" and "ddpm ancestral@10" in res.reason


def test_one_seed_is_inconclusive_and_pairs_are_by_seed():
    [res] = check_claims([better()], ddpm_runs([10.0], [20.0]), DIRECTIONS)
    assert res.verdict == "inconclusive" and "need at least 2" in res.reason
    # A on seeds 0,1 and B on seeds 2,3: nothing to pair
    recs = [record("ddpm", s, {("fid", "ddim", 10): 10.0}) for s in (0, 1)]
    recs += [record("ddpm", s, {("fid", "ancestral", 10): 20.0}) for s in (2, 3)]
    [res] = check_claims([better()], recs, DIRECTIONS)
    assert res.verdict == "inconclusive" and res.seeds == []


def test_numbers_and_seeds_are_reported():
    [res] = check_claims([better()], ddpm_runs([10.0, 12.0, 11.0], [20.0, 21.0, 23.0]), DIRECTIONS)
    assert res.seeds == [0, 1, 2] and res.values_a == [10.0, 12.0, 11.0] and res.values_b == [20.0, 21.0, 23.0]
    assert res.mean_a == pytest.approx(11.0) and res.mean_b == pytest.approx(64 / 3)
    assert res.diff["mean"] == pytest.approx(11.0 - 64 / 3) and res.diff["high"] < 0 < res.p_value < 0.05


def test_higher_is_better_metric_flips_the_verdict():
    recs = [record("ddpm", s, {("isc", "ddim", 10): 5.0 + s, ("isc", "ancestral", 10): 3.0 + s * 1.1}) for s in range(3)]
    assert verdicts([better(metric="isc")], recs) == [("digits", "holds")]


def test_only_test_split_values_of_ok_runs_count():
    recs = ddpm_runs([10.0, 12.0, 11.0], [20.0, 21.0, 23.0])
    for r in recs:  # validation values that say the opposite must be ignored
        r["metrics"] += [{"name": "fid", "sampler": "ddim", "nfe": 10, "value": 99.0, "split": "val"}]
    recs.append(record("ddpm", 3, {("fid", "ddim", 10): 90.0, ("fid", "ancestral", 10): 1.0}, status="failed"))
    recs.append(record("ddpm", 4, {("fid", "ddim", 10, "test"): 10.5, ("fid", "ancestral", 10, "test"): 22.0}))
    [res] = check_claims([better()], recs, DIRECTIONS)
    assert res.verdict == "holds" and res.seeds == [0, 1, 2, 4] and 99.0 not in res.values_a


def test_model_metrics_recorded_with_split_none_count():
    # the host writes model metrics without a split; an explicit None (other record writers) counts too
    recs = [record("flow", s, {("test_nll", None, None, None): a}, dataset="8gaussians", modality="toy2d")
            for s, a in enumerate([3.0, 3.1, 3.05])]
    recs += [record("flow", s, {("test_nll", None, None, None): b}, dataset="8gaussians",
                    modality="toy2d", hparams={"coupling": "additive"}) for s, b in enumerate([3.5, 3.7, 3.6])]
    claim = PaperClaim(name="affine-wins", statement="affine beats additive", relation="better", metric="test_nll",
                       dataset="modality:toy2d", a=Cell("flow"), b=Cell("flow[coupling=additive]"), paper="1807.03039",
                       table="Glow Fig. 3")
    [res] = check_claims([claim], recs, {"test_nll": "lower"})
    assert res.verdict == "holds" and res.seeds == [0, 1, 2]


def test_improves_and_gap_closes():
    improves = PaperClaim(name="anc-improves", statement="more steps, better FID", relation="improves", metric="fid",
                          dataset="digits", a=ANC, nfes=(10, 100), paper="2010.02502", table="DDIM T1")
    closes = PaperClaim(name="gap-closes", statement="lead shrinks", relation="gap_closes", metric="fid",
                        dataset="digits", a=DDIM, b=ANC, nfes=(10, 100), paper="2010.02502", table="DDIM T1")
    lo = {0: (40.0, 80.0), 1: (42.0, 85.0), 2: (41.0, 79.0)}  # seed: (ddim, ancestral)
    hi = {0: (23.0, 30.0), 1: (24.0, 33.0), 2: (22.0, 31.0)}

    def runs(lo, hi):
        return [record("ddpm", s, {("fid", "ddim", 10): lo[s][0], ("fid", "ancestral", 10): lo[s][1],
                                   ("fid", "ddim", 100): hi[s][0], ("fid", "ancestral", 100): hi[s][1]}) for s in lo]

    assert verdicts([improves, closes], runs(lo, hi)) == [("digits", "holds"), ("digits", "holds")]
    # swap the NFEs: ancestral gets worse with steps and DDIM's lead grows
    assert verdicts([improves, closes], runs(hi, lo)) == [("digits", "fails"), ("digits", "fails")]
    [res] = check_claims([closes], runs(lo, hi), DIRECTIONS)
    assert res.values_a == [7.0, 9.0, 9.0] and res.values_b == [40.0, 43.0, 38.0]  # leads at 100 and at 10


def test_tie_needs_the_interval_inside_the_tolerance():
    tie = better(name="tie", relation="tie", tolerance=1.0)
    assert verdicts([tie], ddpm_runs([10.0, 12.0, 11.0], [10.1, 12.2, 10.9])) == [("digits", "holds")]
    assert verdicts([tie], ddpm_runs([10.0, 12.0, 11.0], [20.0, 21.0, 23.0])) == [("digits", "fails")]
    assert verdicts([tie], ddpm_runs([10.0, 12.0, 11.0], [11.0, 10.0, 11.5])) == [("digits", "inconclusive")]


def test_dataset_patterns_and_method_labels():
    claim = PaperClaim(name="iwae", statement="L_64 tighter", relation="better", metric="test_nll",
                       dataset="modality:toy2d", a=Cell("vae[iw_samples=64]"), b=Cell("vae"), paper="1509.00519",
                       table="IWAE Theorem 1")
    recs = []
    for ds in ("8gaussians", "moons"):
        for s in range(3):
            recs.append(record("vae", s, {("test_nll", None, None): 4.2 + 0.1 * s}, dataset=ds, modality="toy2d"))
            recs.append(record("vae", s, {("test_nll", None, None): 4.0 + 0.11 * s}, dataset=ds, modality="toy2d",
                               hparams={"iw_samples": 64}))
    recs.append(record("vae", 0, {("test_nll", None, None): 1.0}, dataset="digits", modality="image"))
    assert verdicts([claim], recs) == [("8gaussians", "holds"), ("moons", "holds")]


def test_mixed_fingerprints_are_not_compared():
    recs = ddpm_runs([10.0, 12.0], [20.0, 21.0]) + ddpm_runs([10.0, 12.0, 11.0], [20.0, 21.0, 23.0], fp="other")[2:]
    [res] = check_claims([better()], recs, DIRECTIONS)
    assert res.verdict == "untested" and "fingerprints" in res.reason


# -- definitions and registration -------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"relation": "beats"}, "unknown relation 'beats'"),
    ({"paper": "DDIM"}, "arXiv id"),
    ({"relation": "tie"}, "tolerance > 0"),
    ({"relation": "improves"}, "give no b"),
    ({"relation": "gap_closes", "a": DDIM, "b": ANC, "nfes": (100, 10)}, "low < high"),
    ({"relation": "gap_closes", "nfes": (10, 100)}, "leave the cells' nfe None"),
    ({"nfes": (10, 100)}, "only for 'improves'"),
    ({"statement": "two\nlines"}, "one line"),
    ({"b": None}, "needs a cell b"),
])
def test_bad_claims_are_refused(change, message):
    with pytest.raises(ClaimError, match=message):
        better(**change)


def test_an_observation_needs_no_paper():
    claim = better(source="observation", paper="", table="REFERENCES.md, Toy 2-D")
    assert claim.cite == "observation: REFERENCES.md, Toy 2-D"


class Claims:
    def __init__(self, *claims):
        self.claims = claims

    @hookimpl
    def gmbench_register_claims(self, register):
        for c in self.claims:
            register(c)


def _registries(*plugins):
    return Registries(make_plugin_manager(extra_plugins=plugins, load_entrypoints=False))


def test_duplicate_claim_names_are_refused():
    with pytest.raises(RegistryError, match="claim 'ddim-wins' registered twice"):
        _registries(Claims(better()), Claims(better(statement="again"))).claims


def test_builtin_plugins_register_their_claims():
    names = Registries(make_plugin_manager()).claims.names()
    assert {"ddim-beats-ancestral-digits-fid-10", "ddim-lead-closes-digits-fid", "iwae-bound-tightens-toy2d"} <= set(names)


def test_the_hook_doc_example_registers_a_claim():
    from tests.test_hook_docs import example_plugin

    assert len(_registries(example_plugin("gmbench_register_claims")).claims) == 1


# -- the command ------------------------------------------------------------------------


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A results folder with ddpm records where DDIM wins; the claims of the test plugin only."""
    out = tmp_path / "results"
    out.mkdir()
    for i, r in enumerate(ddpm_runs([10.0, 12.0, 11.0], [20.0, 21.0, 23.0])):
        (out / f"r{i}.json").write_text(json.dumps(r))

    def use(*claims):
        monkeypatch.setattr("gmbench.plugins.Registries", lambda: _registries(Claims(*claims)))
        return str(out)

    return use


def test_cli_markdown_and_strict(results):
    wrong = better(name="ancestral-wins", a=ANC.at(10), b=DDIM.at(10))
    missing = better(name="on-cifar", dataset="cifar10")
    path = results(better(), wrong, missing)
    res = CliRunner().invoke(main, ["claims", path])
    assert res.exit_code == 0, res.output
    assert "holds 1, fails 1, inconclusive 0, untested 1" in res.output
    assert "| **holds**" in res.output and "ddim-wins" in res.output and "0, 1, 2" in res.output
    assert CliRunner().invoke(main, ["claims", path, "--strict"]).exit_code == 1


def test_cli_strict_passes_without_failures(results):
    assert CliRunner().invoke(main, ["claims", results(better()), "--strict"]).exit_code == 0


def test_cli_json_schema(results, tmp_path):
    report = tmp_path / "claims.json"
    res = CliRunner().invoke(main, ["claims", results(better()), "--json", "--out", str(report)])
    assert res.exit_code == 0 and "report written to" in res.output
    data = json.loads(report.read_text())
    assert data["summary"] == {"holds": 1, "fails": 0, "inconclusive": 0, "untested": 0}
    [row] = data["results"]
    assert set(row) == {"claim", "statement", "relation", "metric", "paper", "table", "source", "dataset", "budget",
                        "verdict", "reason", "compared", "direction", "seeds", "values_a", "values_b", "mean_a",
                        "mean_b", "diff", "p_value", "test", "confidence"}
    assert row["verdict"] == "holds" and row["seeds"] == [0, 1, 2] and row["paper"] == "2010.02502"
    assert set(row["diff"]) == {"mean", "low", "high"} and row["p_value"] < 0.05


def test_cli_unreadable_results_exit_2(tmp_path, results):
    results(better())
    (tmp_path / "bad.json").write_text("{")
    res = CliRunner().invoke(main, ["claims", str(tmp_path / "bad.json")])
    assert res.exit_code == 2 and "not valid JSON" in res.output
