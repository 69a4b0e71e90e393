"""Quality against training compute on the boards (gmbench/curve_board.py) and `gmbench run --budget a,b`.

Records are synthetic (shaped like the runner's, with a ``curve``), so every table value
and crossover is known by hand: three seeds whose values are a, a + 0.01, a + 0.02 have
mean a + 0.01 and a 95% t half-width of t(0.975, 2) * 0.01 / sqrt(3) = 0.0248.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gmbench.curve_board import build_curve_pages, flops_text
from gmbench.leaderboard import LeaderboardError, write_leaderboards
from tests.test_leaderboard import _registries, cells, invoke, make_record, table_rows, write

FRACTIONS = (0.125, 0.25, 0.5, 1.0)
SEEDS3 = (0.0, 0.01, 0.02)  # per-seed offsets: std 0.01


def curve_record(method, seed, values, *, budget="small", allowed=1e12, fractions=FRACTIONS, sampler="euler", nfe=20,
                 n=500, model_size="small", metric_version="1", dataset="8gaussians", **extra) -> dict:
    """A run record with a curve: ``values`` are the primary metric (swd) at ``fractions``
    (None: the point was skipped)."""
    rec = make_record(method, seed, {("swd", sampler, nfe): values[-1] if values[-1] is not None else 1.0},
                      dataset=dataset, budget=budget, fingerprint=f"fp-{budget}", **extra)
    rec["fingerprint_fields"] = {"dataset": dataset, "budget": budget, "eval_samples": 500, "model_size": model_size,
                                 "train_flops": allowed, "nfe_grid": [10, 20, 50, 100],
                                 "metrics": {"toy2d_samples": {"version": metric_version}}}
    rec["train"] = {"flops": allowed * 1.001, "flops_allowed": allowed, "steps": 100}
    rec["curve"] = []
    for f, v in zip(fractions, values):
        point = {"fraction": f, "flops": f * allowed * 1.002, "stage": "main", "step": int(100 * f), "metric": "swd",
                 "version": "1", "n": n, "seconds": 0.5}
        if v is None:
            point["skipped"] = "stage autoencoder: the metric needs the latent stage"
        else:
            point.update(value=v, sampler=sampler, nfe=nfe)
        rec["curve"].append(point)
    return rec


def three_seeds(method, means, **kw) -> list[dict]:
    """Seeds 0-2 of ``method`` whose values at each point are mean - 0.01, mean, mean + 0.01."""
    return [curve_record(method, s, [m - 0.01 + d for m in means], **kw) for s, d in enumerate(SEEDS3)]


def crossing_records() -> list[dict]:
    """ddpm improves slowly; flow-matching starts worse and overtakes it between 1/4 and 1/2 of the
    budget, beyond seed noise; vae's seeds scatter so its order changes stay within noise."""
    recs = three_seeds("ddpm", [0.52, 0.41, 0.31, 0.21])
    recs += three_seeds("flow-matching", [0.81, 0.61, 0.11, 0.06])
    vae = [[0.45, 0.30, 0.33, 0.30], [0.60, 0.50, 0.34, 0.31], [0.57, 0.40, 0.35, 0.32]]  # means .54 .40 .34 .31
    recs += [curve_record("vae", s, v, sampler="decoder", nfe=1) for s, v in enumerate(vae)]
    return recs


@pytest.fixture
def real_plots():
    """Requested by the tests that draw the PNGs; the others write a stub (matplotlib is a board's slow part)."""


@pytest.fixture(autouse=True)
def no_plots(request, monkeypatch):
    if "real_plots" in request.fixturenames:
        return

    def stub(*args, **kwargs):
        args[-1].write_bytes(b"\x89PNG stub")

    monkeypatch.setattr("gmbench.leaderboard.plot_board", stub)
    monkeypatch.setattr("gmbench.curve_board.plot_group", stub)


def page_of(out) -> str:
    return (out / "8gaussians__curves.md").read_text()


# -- the table and the crossovers ------------------------------------------------------------


def test_table_gives_mean_and_t_interval_per_training_flops_point(tmp_path):
    write_leaderboards(crossing_records(), tmp_path, _registries())
    page = page_of(tmp_path)
    rows = table_rows(page, "method | sampler @ NFE")
    assert cells(rows[0])[2:] == ["1.25e11 (small, 1/8)", "2.5e11 (small, 1/4)", "5e11 (small, 1/2)", "1e12 (small, 1)"]
    body = {cells(r)[0]: cells(r)[1:] for r in rows[2:]}
    # mean a + 0.01, half-width 4.303 * 0.01 / sqrt(3) = 0.0248
    assert body["ddpm"] == ["euler @ 20", "0.52 ± 0.025 (n=3)", "0.41 ± 0.025 (n=3)", "0.31 ± 0.025 (n=3)",
                            "0.21 ± 0.025 (n=3)"]
    assert body["flow-matching"][2] == "0.61 ± 0.025 (n=3)"
    # vae at 1/4: 0.30, 0.50, 0.40: mean 0.40, std 0.1, half-width 0.248
    assert body["vae"][:3] == ["decoder @ 1", "0.54 ± 0.2 (n=3)", "0.4 ± 0.25 (n=3)"]
    assert "![swd against training FLOPs](8gaussians__curves.png)" in page
    board = (tmp_path / "8gaussians__small.md").read_text()
    assert "## Quality against training compute" in board and "(8gaussians__curves.md)" in board
    assert "[8gaussians](8gaussians__curves.md)" in (tmp_path / "index.md").read_text()


def test_crossovers_are_found_where_constructed_and_labelled_noise_where_intervals_overlap(tmp_path):
    write_leaderboards(crossing_records(), tmp_path, _registries())
    found = [line[2:] for line in page_of(tmp_path).split("### Crossovers")[1].splitlines() if line.startswith("- ")]
    assert found == [
        "**vae** overtakes **ddpm** between 1.25e11 and 2.5e11 FLOPs — within seed noise: the 95% intervals overlap "
        "at 1.25e11 and at 2.5e11.",
        "**flow-matching** overtakes **ddpm** between 2.5e11 and 5e11 FLOPs: the 95% intervals separate at both points.",
        "**ddpm** overtakes **vae** between 2.5e11 and 5e11 FLOPs — within seed noise: the 95% intervals overlap "
        "at 2.5e11 and at 5e11.",
        "**flow-matching** overtakes **vae** between 2.5e11 and 5e11 FLOPs — within seed noise: the 95% intervals "
        "overlap at 2.5e11.",
    ]


def test_no_crossover_where_the_order_never_changes_and_one_seed_is_never_separated(tmp_path):
    recs = three_seeds("ddpm", [0.5, 0.4, 0.3, 0.2]) + three_seeds("vae", [0.6, 0.5, 0.4, 0.3])
    write_leaderboards(recs, tmp_path / "a", _registries())
    assert "No method overtakes another" in page_of(tmp_path / "a")
    one = [curve_record("ddpm", 0, [0.5, 0.4, 0.3, 0.2]), curve_record("vae", 0, [0.6, 0.5, 0.1, 0.1])]
    write_leaderboards(one, tmp_path / "b", _registries())
    page = page_of(tmp_path / "b")
    assert ("**vae** overtakes **ddpm** between 2.5e11 and 5e11 FLOPs — within seed noise: fewer than 2 seeds "
            "(no interval) at 2.5e11 and at 5e11.") in page
    assert "0.5 (n=1)" in page


def test_higher_is_better_metrics_cross_the_other_way():
    from gmbench.curve_board import CurveGroup, Series, Cell, Column, find_crossovers

    cols = [Column(1e11, "b", 0.5), Column(2e11, "b", 1.0)]
    a = Series("a", "s", 1, {cols[0]: Cell({0: 0.1, 1: 0.11, 2: 0.12}), cols[1]: Cell({0: 0.9, 1: 0.91, 2: 0.92})})
    b = Series("b", "s", 1, {cols[0]: Cell({0: 0.5, 1: 0.51, 2: 0.52}), cols[1]: Cell({0: 0.5, 1: 0.51, 2: 0.52})})
    (x,) = find_crossovers(CurveGroup("score", "higher", {}, cols, [a, b], {}))
    assert (x.winner.method, x.loser.method, x.separated) == ("a", "b", True)
    (y,) = find_crossovers(CurveGroup("score", "lower", {}, cols, [a, b], {}))
    assert (y.winner.method, y.loser.method, y.separated) == ("b", "a", True)


def test_points_without_a_value_are_listed_not_averaged(tmp_path):
    recs = three_seeds("ddpm", [0.5, 0.4, 0.3, 0.2])
    recs[0]["curve"][0] = {**recs[0]["curve"][0], "error": "RuntimeError: sampler blew up"}
    write_leaderboards(recs, tmp_path, _registries())
    page = page_of(tmp_path)
    ddpm = cells(table_rows(page, "method | sampler @ NFE")[2])
    assert ddpm[2].endswith("(n=2)")  # seeds 1 and 2 only
    assert "- ddpm · euler @ 20 at 1.25e11: seed 0: RuntimeError: sampler blew up" in page


def test_regeneration_is_byte_identical(tmp_path, real_plots):
    recs = crossing_records() + three_seeds("ddpm", [0.2, 0.15, 0.1, 0.05], budget="standard", allowed=1e13, nfe=50,
                                            model_size="base")
    write_leaderboards(recs, tmp_path / "a", _registries())
    write_leaderboards(list(reversed(recs)), tmp_path / "b", _registries())
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "8gaussians__curves.md" in names and "8gaussians__curves.png" in names
    assert (tmp_path / "a" / "8gaussians__curves.png").read_bytes().startswith(b"\x89PNG")
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# -- joining budgets -------------------------------------------------------------------------


def test_budgets_with_the_same_curve_protocol_are_joined_on_one_curve(tmp_path):
    small = three_seeds("ddpm", [0.5, 0.4, 0.3, 0.2]) + three_seeds("vae", [0.6, 0.5, 0.4, 0.35], sampler="decoder", nfe=1)
    standard = (three_seeds("ddpm", [0.19, 0.15, 0.1, 0.05], budget="standard", allowed=1e13, nfe=50, model_size="base")
                + three_seeds("vae", [0.3, 0.28, 0.27, 0.26], budget="standard", allowed=1e13, sampler="decoder", nfe=1,
                              model_size="base"))
    write_leaderboards(small + standard, tmp_path, _registries())
    page = page_of(tmp_path)
    assert page.count("\n## ") == 1 and "## swd — budgets small, standard" in page
    assert "Budgets small, standard are joined on this curve" in page and "(small: small, standard: base)" in page
    rows = {tuple(cells(r)[:2]): cells(r)[2:] for r in table_rows(page, "method | sampler @ NFE")[2:]}
    # vae samples at one fixed setting: one row across both budgets' eight compute points
    assert [c != "" for c in rows[("vae", "decoder @ 1")]] == [True] * 8
    # ddpm's curve NFE is the middle of each budget's grid: two rows, never one line
    assert [c != "" for c in rows[("ddpm", "euler @ 20")]] == [True] * 4 + [False] * 4
    assert [c != "" for c in rows[("ddpm", "euler @ 50")]] == [False] * 4 + [True] * 4
    assert "ddpm has one row per sampler setting (euler @ 20, euler @ 50)" in page
    header = cells(table_rows(page, "method | sampler @ NFE")[0])
    assert header[5:7] == ["1e12 (small, 1)", "1.25e12 (standard, 1/8)"]
    # both boards link to the one curve page
    for budget in ("small", "standard"):
        assert "(8gaussians__curves.md)" in (tmp_path / f"8gaussians__{budget}.md").read_text()


def test_budgets_whose_curve_protocol_differs_stay_separate_and_the_page_says_why(tmp_path):
    small = three_seeds("ddpm", [0.5, 0.4, 0.3, 0.2])
    large = three_seeds("ddpm", [0.1, 0.09, 0.08, 0.07], budget="large", allowed=1e14, n=1000, model_size="large")
    newer = three_seeds("ddpm", [0.1, 0.09, 0.08, 0.07], budget="standard", allowed=1e13, metric_version="2")
    write_leaderboards(small + large + newer, tmp_path, _registries())
    page = page_of(tmp_path)
    assert "## swd — budget large" in page and "## swd — budget small" in page and "## swd — budget standard" in page
    assert "form 3 separate curves" in page
    why = page.split("## Why the curves are separate")[1]
    assert "curve 1 (budget large) and curve 2 (budget small) differ in samples per point (1000 vs 500)" in why
    assert "(budget small) and curve 3 (budget standard) differ in the metric's version or settings" in why
    assert {"8gaussians__curves-1.png", "8gaussians__curves-2.png", "8gaussians__curves-3.png"} <= {
        p.name for p in tmp_path.iterdir()}


# -- bad and old input -----------------------------------------------------------------------


def test_different_curve_fractions_in_one_budget_are_refused_unless_allowed(tmp_path):
    recs = three_seeds("ddpm", [0.5, 0.4, 0.3, 0.2]) + [curve_record("vae", 0, [0.5, 0.4, 0.3], fractions=(0.25, 0.5, 1.0))]
    res = invoke("leaderboard", write(tmp_path / "r", recs), "--out", tmp_path / "lb")
    assert res.exit_code != 0
    assert res.output.strip().count("\n") == 0, res.output
    assert "curves of 8gaussians / small were taken at different training fractions (1/8, 1/4, 1/2, 1 in 3 record(s); " \
           "1/4, 1/2, 1 in 1 record(s))" in res.output and "--allow-mixed" in res.output
    assert not (tmp_path / "lb" / "index.md").exists()
    res = invoke("leaderboard", tmp_path / "r", "--out", tmp_path / "lb", "--allow-mixed")
    assert res.exit_code == 0, res.output
    assert "and 1 curve page(s)" in res.output
    assert "**Warning:** the curves of budget small were taken at different training fractions" in page_of(tmp_path / "lb")
    # different budgets may take different fractions: their points are at their own compute
    other = three_seeds("ddpm", [0.2, 0.1], budget="standard", allowed=1e13, fractions=(0.5, 1.0))
    write_leaderboards(three_seeds("ddpm", [0.5, 0.4, 0.3, 0.2]) + other, tmp_path / "ok", _registries())


def test_records_without_curves_show_no_curve_section_and_no_error(tmp_path):
    old = [make_record("ddpm", s, {("swd", "euler", 20): 0.3 + s / 100}, budget="small", fingerprint="fp-small")
           for s in range(2)]
    write_leaderboards(old, tmp_path / "a", _registries())
    assert not (tmp_path / "a" / "8gaussians__curves.md").exists()
    assert "training compute" not in (tmp_path / "a" / "8gaussians__small.md").read_text()
    assert "training compute" not in (tmp_path / "a" / "index.md").read_text()
    assert build_curve_pages(old, _registries()) == []
    # an old record beside new ones adds nothing to the curve (and is not a fraction mismatch)
    mixed = three_seeds("vae", [0.5, 0.4, 0.3, 0.2], sampler="decoder", nfe=1) + old
    write_leaderboards(mixed, tmp_path / "b", _registries())
    assert [cells(r)[0] for r in table_rows(page_of(tmp_path / "b"), "method | sampler @ NFE")[2:]] == ["vae"]


def test_a_malformed_curve_is_a_one_line_input_error(tmp_path):
    rec = curve_record("ddpm", 0, [0.5, 0.4, 0.3, 0.2])
    rec["curve"][1]["value"] = "NaN"
    res = invoke("leaderboard", write(tmp_path / "r", [rec]), "--out", tmp_path / "lb")
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0, res.output
    assert "a curve point has value 'NaN', not a number" in res.output


def test_flops_are_written_short():
    assert [flops_text(x) for x in (1.25e11, 2.5e11, 5e11, 1e12, 2e5)] == ["1.25e11", "2.5e11", "5e11", "1e12", "2e5"]


# -- gmbench run --budget a,b ----------------------------------------------------------------


@pytest.mark.parametrize("budget, needle", [
    ("smoke,nosuch", "unknown budget 'nosuch'"),
    ("smoke,,small", "an empty name in the comma list"),
    ("small,smoke,small", "small listed more than once"),
])
def test_bad_budget_lists_are_one_line_errors_before_any_work(tmp_path, budget, needle):
    res = invoke("run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", budget, "--out", tmp_path / "r")
    assert res.exit_code != 0
    assert needle in res.output and "Traceback" not in res.output
    assert sum(needle in line for line in res.output.splitlines()) == 1
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*.json"))


def test_run_with_a_budget_list_runs_each_budget(tmp_path, monkeypatch):
    from gmbench.plugins import Registries, make_plugin_manager
    from tests.plugins.fake_methods import FakePlugin, GaussianFit, TinyBudgetPlugin
    from tests.test_curve import CurveBudgetPlugin

    def registries():
        return Registries(make_plugin_manager(extra_plugins=(FakePlugin(GaussianFit), TinyBudgetPlugin(), CurveBudgetPlugin()),
                                              load_entrypoints=False))

    ran = []

    def run_all(matrix, reg, out_dir, **kw):  # the runner itself is tested elsewhere (tests/test_curve.py)
        ran.extend(matrix.specs)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return []

    monkeypatch.setattr("gmbench.plugins.Registries", registries)
    monkeypatch.setattr("gmbench.runner.run_all", run_all)
    res = invoke("run", "--plugins", "gaussfit", "--datasets", "8gaussians", "--budget", "tiny-test, tiny-curve",
                 "--seeds", "2x", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert "4 runs at budgets 'tiny-test', 'tiny-curve'" in res.output
    assert "budget tiny-test:" in res.output and "budget tiny-curve:" in res.output
    assert [(s.budget, s.seed) for s in ran] == [("tiny-test", 0), ("tiny-test", 1), ("tiny-curve", 0), ("tiny-curve", 1)]


def test_build_refuses_an_unregistered_curve_metric():
    rec = curve_record("ddpm", 0, [0.5, 0.4, 0.3, 0.2])
    for p in rec["curve"]:
        p["metric"] = "nonesuch"
    with pytest.raises(LeaderboardError, match="curve metric 'nonesuch' of '8gaussians' is not registered"):
        build_curve_pages([rec], _registries())


def test_a_compute_point_names_its_budget_only_where_two_budgets_share_its_flops(tmp_path):
    # 1/2 of 2e12 is 1e12, the end of small: the two columns are told apart by their budget
    recs = (three_seeds("ddpm", [0.5, 0.4, 0.3, 0.2], sampler="decoder", nfe=1)
            + three_seeds("vae", [0.6, 0.5, 0.2, 0.1], sampler="decoder", nfe=1)
            + three_seeds("ddpm", [0.25, 0.2], budget="medium", allowed=2e12, fractions=(0.5, 1.0), sampler="decoder", nfe=1)
            + three_seeds("vae", [0.05, 0.04], budget="medium", allowed=2e12, fractions=(0.5, 1.0), sampler="decoder", nfe=1))
    write_leaderboards(recs, tmp_path, _registries())
    page = page_of(tmp_path)
    header = cells(table_rows(page, "method | sampler @ NFE")[0])[2:]
    assert header[3:5] == ["1e12 (medium, 1/2)", "1e12 (small, 1)"]
    assert ("**vae** overtakes **ddpm** between 2.5e11 and 5e11 FLOPs: the 95% intervals separate at both points."
            in page)
    assert "**ddpm** overtakes **vae** between 1e12 (small) and 1e12 (medium) FLOPs" not in page
    assert "**vae** overtakes **ddpm** between 1e12 (medium) and 1e12 (small) FLOPs" not in page  # vae leads at both


def test_same_backbone_gives_one_curve_page_per_family_and_links_each_board_to_its_own(tmp_path):
    recs = (three_seeds("ddpm", [0.5, 0.4, 0.3, 0.2], backbone="UNet(small, 1.4M)")
            + three_seeds("vae", [0.6, 0.5, 0.2, 0.1], sampler="decoder", nfe=1, backbone="MLP(small, 0.1M)"))
    write_leaderboards(recs, tmp_path, _registries(), same_backbone=True)
    assert (tmp_path / "8gaussians__mlp__curves.md").exists() and (tmp_path / "8gaussians__unet__curves.md").exists()
    assert "(8gaussians__unet__curves.md)" in (tmp_path / "8gaussians__small__unet.md").read_text()
    unet = (tmp_path / "8gaussians__unet__curves.md").read_text()
    assert [cells(r)[0] for r in table_rows(unet, "method | sampler @ NFE")[2:]] == ["ddpm"]
    write_leaderboards(recs, tmp_path / "only", _registries(), backbone="mlp")
    assert [cells(r)[0] for r in table_rows(page_of(tmp_path / "only"), "method | sampler @ NFE")[2:]] == ["vae"]
