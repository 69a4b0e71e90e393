"""`gmbench leaderboard`: ranking, intervals, escaping, determinism and bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from gmbench import hookimpl
from gmbench.cli import main
from gmbench.leaderboard import build_boards, md_escape, pareto_front, t_interval, write_leaderboards

LATEST = "2031-05-06T07:08:09+00:00"


def make_record(method, seed, values, *, dataset="8gaussians", budget="tiny", status="ok", error=None,
                fingerprint="fp-one", likelihood=("test_nll", 1.5, "exact"), finished_at="2030-01-01T00:00:00+00:00",
                samples_per_s=1000.0, hparams=None, eval_samples=500, git_revision="abc123", entry_extra=None,
                **extra) -> dict:
    """A run record shaped like the runner's.

    ``values`` maps (name, sampler, nfe) -> test value, or (name, sampler, nfe, "val") -> validation
    value; ``entry_extra`` maps the same keys to extra entry fields (``nfe_counted``...);
    ``likelihood`` is (name, value, label) or (name, value, label, stderr).
    """
    metrics = []
    for key, v in values.items():
        n, s, k = key[:3]
        e = {"metric": "m", "version": "1", "name": n, "sampler": s, "nfe": k, "value": v}
        if len(key) > 3:
            e["split"] = key[3]
        metrics.append({**e, **(entry_extra or {}).get(key, {})})
    if likelihood and status in ("ok", "incomplete"):
        name, value, label = likelihood[:3]
        metrics.insert(0, {"metric": "likelihood", "version": "1", "name": name, "sampler": None, "nfe": None,
                           "value": value, "label": label})
        if len(likelihood) > 3:
            metrics[0]["stderr"] = likelihood[3]
    settings = sorted({(key[1], key[2]) for key in values if key[1] is not None})
    return {
        "schema": 1, "method": method, "dataset": dataset, "budget": budget, "seed": seed,
        "hparams": hparams or {}, "status": status, "error": error,
        "metrics": metrics if status in ("ok", "incomplete") else [],
        "cost": {"params": 1234, "train_flops": 5e6,
                 "sampling": [{"sampler": s, "nfe": k, "samples_per_s": samples_per_s * (10 / k)} for s, k in settings]},
        "provenance": {"gmbench_version": "0.1.0", "git_revision": git_revision, "device": "cpu"},
        "fingerprint": fingerprint, "fingerprint_fields": {"dataset": dataset, "eval_samples": eval_samples},
        "finished_at": finished_at, **extra,
    }


def write(dirpath: Path, records) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(records):
        (dirpath / f"{rec['method']}-{rec.get('seed')}-{i}.json").write_text(json.dumps(rec))
    return dirpath


def standard_records():
    return [
        make_record("slow", 0, {("swd", "euler", 10): 0.9, ("swd", "euler", 50): 0.5}),
        make_record("slow", 1, {("swd", "euler", 10): 0.8, ("swd", "euler", 50): 0.6}, finished_at=LATEST),
        make_record("fast", 0, {("swd", "direct", 1): 0.30}, likelihood=("test_nll", 2.0, "bound")),
        make_record("fast", 1, {("swd", "direct", 1): 0.34}, likelihood=("test_nll", 2.2, "bound")),
        make_record("gan", 0, {("swd", "direct", 1): 0.7}, likelihood=None),
        make_record("broken", 0, {}, status="failed", error="RuntimeError: exploded at step 3"),
    ]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def table_rows(page: str, header: str) -> list[str]:
    """The lines of the table whose header row starts with the given cells (space-insensitive)."""
    lines = page.splitlines()
    pattern = re.compile(r"\|\s*" + r"\s*\|\s*".join(map(re.escape, header.strip("| ").split("|"))) + r"\s*\|")
    i = next(n for n, line in enumerate(lines) if pattern.match(line.replace(" ", " ")))
    rows = []
    for line in lines[i:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def cells(row: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]


# -- ranking ---------------------------------------------------------------------------------


def test_board_ranks_by_primary_metric_and_shows_failures(tmp_path):
    res = invoke("leaderboard", write(tmp_path / "r", standard_records()), "--out", tmp_path / "lb")
    assert res.exit_code == 0, res.output
    page = (tmp_path / "lb" / "8gaussians__tiny.md").read_text()
    rows = [cells(r) for r in table_rows(page, "#")[2:]]
    assert [r[1] for r in rows] == ["fast", "slow", "gan", "broken"]
    # fast and slow are not separated by a paired t-test over their 2 seeds; gan has 1 seed: untested
    assert [r[0] for r in rows] == ["1", "1", "3‡", "—"]
    assert rows[1][7].startswith("tied with fast (p = ") and rows[2][7] == "not tested (1 shared seed)"
    assert {r[6] for r in rows[:3]} == {"test (no validation values)"}
    fast = rows[0]
    assert fast[2].startswith("0.32 ± ") and fast[2].endswith("(n=2)")
    assert fast[4] == "direct @ 1"
    assert fast[5].startswith("≤ 2.1 ± ") and fast[5].endswith("test\\_nll, bound")
    assert rows[1][5].startswith("1.5 ") and "exact" in rows[1][5]
    assert rows[2][5] == "none"
    assert rows[3][-1].startswith("failed (1/1 seeds): RuntimeError: exploded at step 3")
    assert "## Failed runs" in page and "exploded at step 3" in page.split("## Failed runs")[1]
    index = (tmp_path / "lb" / "index.md").read_text()
    assert "[8gaussians / tiny](8gaussians__tiny.md)" in index
    assert (tmp_path / "lb" / "8gaussians__tiny.png").read_bytes().startswith(b"\x89PNG")


def test_best_setting_is_chosen_on_the_mean_over_seeds(tmp_path):
    # per-seed best would pick NFE 10 for seed 0 (0.1) and NFE 50 for seed 1 (0.4): mean 0.25, a flattering mix
    recs = [make_record("m", 0, {("swd", "s", 10): 0.1, ("swd", "s", 50): 0.5}),
            make_record("m", 1, {("swd", "s", 10): 0.9, ("swd", "s", 50): 0.4})]
    write_leaderboards(recs, tmp_path, _registries())
    row = cells(table_rows((tmp_path / "8gaussians__tiny.md").read_text(), "#")[2])
    assert row[2].startswith("0.45 ± ") and row[4] == "s @ 50"


def test_a_setting_missing_on_some_seeds_does_not_win(tmp_path):
    recs = [make_record("m", 0, {("swd", "s", 10): 0.1, ("swd", "s", 50): 0.5}),
            make_record("m", 1, {("swd", "s", 50): 0.4})]  # NFE 10 failed on seed 1
    (board,) = build_boards(recs, _registries())
    assert (board.ranking[0]["nfe"], board.ranking[0]["n"]) == (50, 2)


def test_quality_versus_nfe_table(tmp_path):
    write_leaderboards(standard_records(), tmp_path, _registries())
    rows = table_rows((tmp_path / "8gaussians__tiny.md").read_text(), "method|sampler")
    assert cells(rows[0])[2:] == ["NFE 1", "NFE 10", "NFE 50"]
    slow = next(cells(r) for r in rows[2:] if cells(r)[0] == "slow")
    assert slow[1] == "euler" and slow[2] == "" and slow[3].startswith("0.85 ± ") and slow[4].startswith("0.55 ± ")


def test_settings_a_run_recorded_without_a_value_are_listed_with_the_reason(tmp_path):
    cap = "not evaluated: evaluation cap of 900s reached"
    recs = [make_record("slow", seed, {("swd", "euler", 10): 0.9, ("*", "euler", 50): None, ("*", "euler", 100): None},
                        entry_extra={("*", "euler", 50): {"error": cap}, ("*", "euler", 100): {"error": cap}})
            for seed in (0, 1)]
    recs.append(make_record("fast", 0, {("swd", "direct", 1): 0.3, ("fid_inception", "direct", 1): None},
                            entry_extra={("fid_inception", "direct", 1): {"skipped": "no Inception weights"}}))
    recs.append(make_record("slow", 2, {("swd", "euler", 10): 0.8, ("swd", "euler", 50): 0.6, ("*", "euler", 100): None},
                            entry_extra={("*", "euler", 100): {"error": cap}}))  # got one setting further
    write_leaderboards(recs, tmp_path, _registries())
    page = (tmp_path / "8gaussians__tiny.md").read_text()
    rows = [cells(r) for r in table_rows(page, "method|seeds|settings|reason")[2:]]
    # by NFE; seeds share a row only when they miss the same settings; a skipped optional metric is no error
    assert rows == [["slow", "0, 1", "euler@50, euler@100", cap], ["slow", "2", "euler@100", cap]]
    # a board whose runs recorded every setting has no such section
    write_leaderboards(standard_records(), tmp_path / "clean", _registries())
    assert "## Settings without a value" not in (tmp_path / "clean" / "8gaussians__tiny.md").read_text()


def test_higher_is_better_metrics_rank_descending(tmp_path):
    reg = _registries(ScorePlugin())
    recs = [make_record(m, 0, {("score", "s", 1): v}, dataset="scored") for m, v in (("lo", 0.2), ("hi", 0.9), ("mid", 0.5))]
    (board,) = build_boards(recs, reg)
    assert board.direction == "higher"
    assert [r["method"] for r in board.ranking] == ["hi", "mid", "lo"]


def test_t_interval():
    mean, half, n = t_interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert math.isnan(t_interval([5.0])[1])


def test_pareto_front():
    pts = [(1.0, 0.5), (2.0, 0.6), (3.0, 0.2), (4.0, 0.3), (0.5, 0.9)]
    assert pareto_front(pts, "lower") == [(0.5, 0.9), (1.0, 0.5), (3.0, 0.2)]
    assert pareto_front(pts, "higher") == [(0.5, 0.9)]


def test_hyperparameters_and_precision_are_separate_entries(tmp_path):
    recs = [make_record("vae", 0, {("swd", "p", 1): 0.5}),
            make_record("vae", 0, {("swd", "p", 1): 0.4}, hparams={"beta": 0.5}),
            make_record("vae", 0, {("swd", "p", 1): 0.45}, precision="bf16")]
    (board,) = build_boards(recs, _registries())
    assert [r["method"] for r in board.ranking] == ["vae[beta=0.5]", "vae[bf16]", "vae"]


# -- safety and determinism ------------------------------------------------------------------


def test_plugin_text_cannot_break_tables_or_inject_markup(tmp_path):
    evil = "evil|name\n<script>alert(1)</script>[x](javascript:y)"
    recs = standard_records() + [
        make_record(evil, 0, {("swd", "s|x\n", 1): 0.1}),
        make_record("bad-error", 0, {}, status="failed", error="boom | <img src=x onerror=alert(1)>\nsecond line"),
    ]
    write_leaderboards(recs, tmp_path, _registries())
    page = (tmp_path / "8gaussians__tiny.md").read_text()
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page and "second line" not in page
    assert "[x](javascript" not in page and "\\[x\\](javascript" in page  # brackets escaped: no link
    for header in ("#", "method|sampler", "method|seed"):
        rows = table_rows(page, header)
        widths = {len(cells(r)) for r in rows}
        assert len(widths) == 1, f"a row of the {header!r} table has a different number of columns"
    assert md_escape("a|b\r\nc<d>") == "a\\|b c&lt;d&gt;"


def test_same_records_give_byte_identical_output(tmp_path):
    recs = standard_records()
    a, b = tmp_path / "a", tmp_path / "b"
    write_leaderboards(recs, a, _registries())
    write_leaderboards(list(reversed(recs)), b, _registries())
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and any(n.endswith(".png") for n in names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    page = (a / "8gaussians__tiny.md").read_text()
    assert f"latest run finished {LATEST}" in page  # the date comes from the records, not the clock
    assert "gmbench 0.1.0 at git revision abc123, device cpu" in page


def test_duplicate_records_of_one_run_count_once(tmp_path):
    recs = standard_records()
    res = invoke("leaderboard", write(tmp_path / "r1", recs), write(tmp_path / "r2", recs[:2]), "--out", tmp_path / "lb")
    assert res.exit_code == 0, res.output
    assert "2 duplicate record(s)" in res.output
    row = cells(table_rows((tmp_path / "lb" / "8gaussians__tiny.md").read_text(), "#")[3])
    assert row[1] == "slow" and row[3] == "2/2"


def test_mixed_fingerprints_are_refused_unless_allowed(tmp_path):
    recs = standard_records()
    recs[0] = make_record("slow", 0, {("swd", "euler", 10): 0.9}, fingerprint="fp-two", eval_samples=2000)
    res = invoke("leaderboard", write(tmp_path / "r", recs), "--out", tmp_path / "lb")
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit)
    assert "mixes 2 protocol fingerprints" in res.output and "eval_samples" in res.output and "--allow-mixed" in res.output
    assert not (tmp_path / "lb").exists()
    res = invoke("leaderboard", tmp_path / "r", "--out", tmp_path / "lb", "--allow-mixed")
    assert res.exit_code == 0, res.output
    assert "**Warning:** this board mixes 2 protocol fingerprints" in (tmp_path / "lb" / "8gaussians__tiny.md").read_text()


def test_one_board_per_dataset_and_budget(tmp_path):
    recs = standard_records() + [make_record("fast", 0, {("swd", "direct", 1): 0.2}, dataset="moons"),
                                 make_record("fast", 0, {("swd", "direct", 1): 0.2}, budget="smoke", fingerprint="fp-3")]
    paths = write_leaderboards(recs, tmp_path, _registries())
    assert sorted(p.name for p in paths if p.suffix == ".md") == [
        "8gaussians__smoke.md", "8gaussians__tiny.md", "index.md", "moons__tiny.md"]


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no such results path"),
    (lambda d: d.mkdir(), "no run records (*.json) found"),
    (lambda d: write(d, standard_records()) and (d / "zz.json").write_text('{"method": "x", '), "is not valid JSON"),
    (lambda d: write(d, [make_record("a", 0, {("swd", "s", 1): 1.0}, schema=99)]), "newer than this gmbench"),
    (lambda d: write(d, [{"method": "a", "status": "ok"}]), "lacks field(s) dataset, budget, seed"),
    (lambda d: write(d, [make_record("a", 0, {("swd", "s", 1): 1.0}, dataset="nowhere")]), "'nowhere' is not registered"),
])
def test_bad_input_is_one_clear_line(tmp_path, setup, message):
    setup(tmp_path / "results")
    res = invoke("leaderboard", tmp_path / "results", "--out", tmp_path / "lb")
    # unusable records: 2, as in `gmbench compare` and `gmbench claims`; a dataset this install
    # does not have (its plugin is missing) is the environment's problem: 1
    assert res.exit_code == (1 if "not registered" in message else 2)
    assert isinstance(res.exception, SystemExit), f"traceback instead of a message: {res.exception!r}"
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_records_written_by_the_runner(tmp_path):
    """End to end with real records: fake methods through the real runner."""
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.runner import expand, run_all
    from tests.plugins.fake_methods import BrokenTrain, FakePlugin, GaussianFit, TinyGAN

    reg = Registries(make_plugin_manager(extra_plugins=(FakePlugin(GaussianFit, TinyGAN, BrokenTrain), TinyBudgetPlugin()),
                                         load_entrypoints=False))
    run_all(expand(reg, "gaussfit,tinygan,broken-train", "8gaussians", "lb-tiny", seeds=(0, 1)), reg, tmp_path / "runs")
    # --allow-dirty: this checkout may have uncommitted changes while the tests run
    res = invoke("leaderboard", tmp_path / "runs", "--out", tmp_path / "lb", "--allow-dirty")
    assert res.exit_code == 0, res.output
    rows = [cells(r) for r in table_rows((tmp_path / "lb" / "8gaussians__lb-tiny.md").read_text(), "#")[2:]]
    by_method = {r[1]: r for r in rows}
    assert set(by_method) == {"gaussfit", "tinygan", "broken-train"}
    assert by_method["gaussfit"][3] == "2/2" and "exact" in by_method["gaussfit"][5] and "(n=2)" in by_method["gaussfit"][2]
    assert by_method["tinygan"][5] == "none"
    assert by_method["gaussfit"][6] == "validation"  # the runner scores validation copies: settings are chosen on them
    assert by_method["broken-train"][0] == "—" and "injected failure" in by_method["broken-train"][-1]


# -- helpers ---------------------------------------------------------------------------------


class TinyBudgetPlugin:
    @hookimpl
    def gmbench_register_budgets(self, register):
        from gmbench.budget import Budget

        register(Budget(name="lb-tiny", train_flops={"toy2d": 2e5, "image": 2e5, "text": 2e5},
                        batch_size={"toy2d": 64, "image": 16, "text": 8}, wall_clock_s=30, model_size="tiny",
                        eval_samples={"toy2d": 200, "image": 16, "text": 8}, nfe_grid=(2,), eval_timeout_s=30))


class ScorePlugin:
    """A dataset ranked by a higher-is-better metric."""

    @hookimpl
    def gmbench_register_datasets(self, register):
        from gmbench.data.toy2d import TOY2D_DATASETS

        base = next(d for d in TOY2D_DATASETS if d.name == "moons")
        register(type("Scored", (base,), {"name": "scored", "primary_metric": "score"}))

    @hookimpl
    def gmbench_register_metrics(self, register):
        from gmbench.metrics.base import Metric, MetricOutput

        register(type("Score", (Metric,), {"name": "score", "modalities": ("toy2d",),
                                           "outputs": (MetricOutput("score", "higher"),)})())


def _registries(*plugins):
    from gmbench.plugins import Registries, make_plugin_manager

    return Registries(make_plugin_manager(extra_plugins=plugins, load_entrypoints=False))


def test_likelihood_column_prefers_the_unified_likelihood_over_derived_numbers():
    import pandas as pd

    from gmbench.leaderboard import _likelihood

    v = pd.DataFrame({"name": ["entropy_rate_gap_bpc", "test_bpc"], "value": [1.9, 2.6], "label": ["bound", "bound"]})
    assert _likelihood(v)["name"] == "test_bpc" and _likelihood(v)["mean"] == 2.6


# -- trustworthy boards: selection, ties, labels, unranked rows, provenance -------------------


def board_rows(tmp_path, recs, **kw) -> tuple[str, list[dict]]:
    """Write the board of ``recs``; return its page and its main table as {header: cell} rows."""
    write_leaderboards(recs, tmp_path, _registries(), **kw)
    page = (tmp_path / "8gaussians__tiny.md").read_text()
    table = table_rows(page, "#")
    headers = cells(table[0])
    return page, [dict(zip(headers, cells(r))) for r in table[2:]]


def test_setting_is_chosen_on_validation_and_the_test_value_is_reported(tmp_path):
    from gmbench.ranking import best_entry
    from gmbench.stats import seed_values

    # on test NFE 10 looks best; validation prefers NFE 50, and the board must follow validation
    recs = [make_record("m", seed, {("swd", "s", 10): t10, ("swd", "s", 50): t50,
                                    ("swd", "s", 10, "val"): v10, ("swd", "s", 50, "val"): v50})
            for seed, (t10, t50, v10, v50) in enumerate([(0.1, 0.5, 0.9, 0.3), (0.2, 0.6, 0.8, 0.4)])]
    page, (row,) = board_rows(tmp_path, recs)
    assert row["sampler @ NFE"] == "s @ 50" and row["swd"].startswith("0.55 ± ") and row["chosen on"] == "validation"
    nfe = {cells(r)[0]: cells(r)[2:] for r in table_rows(page, "method|sampler")[2:]}
    assert nfe["m"][0].startswith("0.15 ± ") and nfe["m"][1].startswith("0.55 ± ")  # test values only
    assert "0.85" not in page and "0.35" not in page  # validation means never reach a table
    assert best_entry(recs[0], "swd", "lower")["value"] == 0.5  # the run summary's choice, one record
    assert seed_values(recs, "m", "8gaussians", "swd") == {0: 0.5, 1: 0.6}


def test_records_without_validation_values_are_chosen_on_test_and_say_so(tmp_path):
    _, (row,) = board_rows(tmp_path, [make_record("m", 0, {("swd", "s", 10): 0.4, ("swd", "s", 50): 0.2})])
    assert row["sampler @ NFE"] == "s @ 50" and row["chosen on"] == "test (no validation values)"


def test_ranks_come_in_groups_by_the_paired_test(tmp_path):
    per_seed = {"a": (0.10, 0.20, 0.30),
                "b": (0.50, 0.62, 0.71),  # worse than a by ~0.41 on every seed: separated
                "c": (0.52, 0.58, 0.75),  # within seed noise of b: tied
                "d": (0.90, 1.00, 1.10)}  # worse than c on every seed: separated
    recs = [make_record(m, seed, {("swd", "s", 1): v}) for m, vs in per_seed.items() for seed, v in enumerate(vs)]
    page, rows = board_rows(tmp_path, recs)
    assert [(r["#"], r["method"]) for r in rows] == [("1", "a"), ("2", "b"), ("2", "c"), ("4", "d")]
    p = {r["method"]: float(r["vs group lead"].split("p = ")[1].rstrip(")")) for r in rows[1:]}
    assert rows[1]["vs group lead"].startswith("worse than a") and rows[2]["vs group lead"].startswith("tied with b")
    assert rows[3]["vs group lead"].startswith("worse than b")
    assert p["b"] < 0.05 and p["c"] > 0.05 and p["d"] < 0.05
    assert "paired t-test" in page and "not tested" not in page


def test_ties_do_not_chain_a_method_clearly_below_the_leader_ranks_below_it(tmp_path):
    # b is within seed noise of a, c within seed noise of b, but a beats c on every seed:
    # chained ties would put all three at rank 1
    per_seed = {"a": (0.10, 0.30, 0.20),
                "b": (0.30, 0.25, 0.45),
                "c": (0.40, 0.55, 0.50)}
    recs = [make_record(m, seed, {("swd", "s", 1): v}) for m, vs in per_seed.items() for seed, v in enumerate(vs)]
    _, rows = board_rows(tmp_path, recs)
    from gmbench.stats import paired_compare

    vals = {m: dict(enumerate(v)) for m, v in per_seed.items()}
    assert paired_compare(vals["b"], vals["a"], "lower").better is None  # a ~ b
    assert paired_compare(vals["c"], vals["b"], "lower").better is None  # b ~ c
    assert paired_compare(vals["c"], vals["a"], "lower").better == "b"  # a beats c
    assert [(r["#"], r["method"]) for r in rows] == [("1", "a"), ("1", "b"), ("3", "c")]
    assert rows[2]["vs group lead"].startswith("worse than a")


def test_one_seed_ranks_are_marked_not_tested(tmp_path):
    recs = [make_record(m, 0, {("swd", "s", 1): v}) for m, v in (("a", 0.1), ("b", 0.2), ("c", 0.3))]
    page, rows = board_rows(tmp_path, recs)
    assert [r["#"] for r in rows] == ["1", "2‡", "3‡"]
    assert "Ranks marked ‡ are **not tested**" in page and "gives rank groups" not in page


def test_likelihood_labels_are_printed_distinctly(tmp_path):
    recs = [make_record("exact", 0, {("swd", "s", 1): 0.1}, likelihood=("test_nll", 1.5, "exact")),
            make_record("bound", 0, {("swd", "s", 1): 0.2}, likelihood=("test_nll", 2.0, "bound")),
            make_record("est", 0, {("swd", "s", 1): 0.3}, likelihood=("test_nll", 2.3, "estimate", 0.03)),
            make_record("est", 1, {("swd", "s", 1): 0.3}, likelihood=("test_nll", 2.5, "estimate", 0.04)),
            make_record("none", 0, {("swd", "s", 1): 0.4}, likelihood=None)]
    page, rows = board_rows(tmp_path, recs)
    lk = {r["method"]: r["likelihood"] for r in rows}
    assert lk["exact"] == "1.5 (n=1) test\\_nll, exact"
    assert lk["bound"] == "≤ 2 (n=1) test\\_nll, bound"
    # stderr of the mean of two independent estimates: sqrt(0.03² + 0.04²) / 2 = 0.025
    assert lk["est"].startswith("≈ 2.4 ± 0.025 stderr; seeds ± ") and lk["est"].endswith("n=2 test\\_nll, estimate")
    assert lk["none"] == "none"
    assert "≤ = an upper bound" in page and "≈ = an unbiased stochastic estimate ± its standard error" in page


def test_incomplete_runs_are_shown_marked_and_unranked(tmp_path):
    recs = [make_record("cut", 0, {("swd", "s", 1): 0.05}, status="incomplete", budget_spent=0.36),
            make_record("part", 0, {("swd", "s", 1): 0.3}), make_record("part", 1, {("swd", "s", 1): 0.4}),
            make_record("part", 2, {("swd", "s", 1): 0.01}, status="incomplete", budget_spent=0.5),
            make_record("other", 0, {("swd", "s", 1): 0.6}), make_record("other", 1, {("swd", "s", 1): 0.75})]
    page, rows = board_rows(tmp_path, recs)
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == ["part", "other", "cut"]  # the best value is not ranked first
    assert by["cut"]["#"] == "—" and by["cut"]["status"] == "incomplete (36% of budget)"
    assert by["cut"]["swd"] == "0.05 (n=1)"  # scored, shown, never ranked
    assert by["part"]["#"] == "1" and by["part"]["swd"].endswith("(n=2)") and by["part"]["swd"].startswith("0.35 ± ")
    assert by["part"]["status"] == "incomplete (1/3 seeds, 50% of budget)" and by["part"]["seeds ok"] == "2/3"
    assert "## Failed runs" not in page and "they are never ranked" in page


def test_counted_nfe_is_shown_where_recorded(tmp_path):
    recs = [make_record("ode", 0, {("swd", "dopri", 10): 0.2}, entry_extra={("swd", "dopri", 10): {"nfe_counted": 62}}),
            make_record("plain", 0, {("swd", "euler", 10): 0.3})]
    _, rows = board_rows(tmp_path, recs)
    assert {r["method"]: r["sampler @ NFE"] for r in rows} == {"ode": "dopri @ 62", "plain": "euler @ 10"}


def test_flops_per_sample_is_shown_where_recorded(tmp_path):
    recs = [make_record("ode", s, {("swd", "dopri", 10): 0.2 + s / 100}) for s in range(3)]
    for rec, flops in zip(recs, (3e6, 1e6, 2e6)):
        rec["cost"] = {"sampling": [{"sampler": "dopri", "nfe": 10, "samples_per_s": 5.0, "flops_per_sample": flops},
                                    {"sampler": "dopri", "nfe": 20, "flops_per_sample": 9e9}]}  # another setting
    _, rows = board_rows(tmp_path, recs)
    assert rows[0]["FLOPs/sample"] == "2e+06"  # the median of the chosen setting's seeds
    _, rows = board_rows(tmp_path / "old", standard_records())
    assert "FLOPs/sample" not in rows[0]  # records from before the sampling audit: no column


def test_memorising_runs_are_flagged(tmp_path):
    recs = [make_record("copycat", 0, {("swd", "s", 1): 0.1, ("copy_share", "s", 1): 0.8}),
            make_record("honest", 0, {("swd", "s", 1): 0.2, ("copy_share", "s", 1): 0.04})]
    page, rows = board_rows(tmp_path, recs)
    assert {r["method"]: r["copies"] for r in rows} == {"copycat": "0.8 memorised", "honest": "0.04"}
    assert "above 0.5 the run is marked memorised" in page
    _, rows = board_rows(tmp_path / "plain", standard_records())
    assert "copies" not in rows[0]  # no copy_share recorded: no column


@pytest.mark.parametrize("revisions, flags, message", [
    (["abc123-dirty"], [], "1 of 6 record(s) were made from a git tree with uncommitted changes"),
    (["abc123-dirty"], ["--allow-dirty"], "the records come from 2 git revisions (abc123, abc123-dirty)"),
    (["def456"], [], "the records come from 2 git revisions"),
])
def test_dirty_trees_and_mixed_revisions_are_refused_unless_allowed(tmp_path, revisions, flags, message):
    recs = standard_records()
    recs[0] = make_record("slow", 0, {("swd", "euler", 10): 0.9}, git_revision=revisions[0])
    res = invoke("leaderboard", write(tmp_path / "r", recs), "--out", tmp_path / "lb", *flags)
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    needed = "--allow-mixed-revisions" if "revisions" in message else "--allow-dirty"
    assert needed in res.output and not (tmp_path / "lb").exists()
    res = invoke("leaderboard", tmp_path / "r", "--out", tmp_path / "lb", "--allow-dirty", "--allow-mixed-revisions")
    assert res.exit_code == 0, res.output
    footer = (tmp_path / "lb" / "8gaussians__tiny.md").read_text().split("---\n")[-1]
    assert "records from 2 git revisions (built with --allow-mixed-revisions)" in footer
    assert ("1 record(s) from a git tree with uncommitted changes (built with --allow-dirty)" in footer) == revisions[0].endswith("-dirty")


def test_run_summary_reports_test_values_at_the_validation_choice(tmp_path):
    from gmbench.cli.run import summary_table

    recs = [make_record("m", seed, {("swd", "s", 10): t10, ("swd", "s", 50): t50,
                                    ("swd", "s", 10, "val"): 0.9, ("swd", "s", 50, "val"): 0.3}, spec_hash=f"h{seed}")
            for seed, (t10, t50) in enumerate([(0.1, 0.5), (0.2, 0.6)])]
    recs.append(make_record("cut", 0, {("swd", "s", 10): 0.01}, status="incomplete", budget_spent=0.25, spec_hash="h9"))
    write(tmp_path, recs)
    lines = summary_table(_registries(), tmp_path, ["h0", "h1", "h9"]).splitlines()
    rows = [line.split() for line in lines[3:]]
    assert [r[:4] for r in rows] == [["m", "0", "0.5", "s@50"], ["m", "1", "0.6", "s@50"], ["cut", "0", "0.01", "s@10"]]
    assert rows[0][4] == "validation" and " ".join(rows[2][-4:]) == "incomplete (25% of budget)"


def rich_records() -> list[dict]:
    """A small board with a tie, a bound, an estimate, an incomplete row and a floor row."""
    def swd(vals, sampler="ddim", nfe=10, counted=None):
        out, extra = {}, {}
        for split, v in vals.items():
            key = ("swd", sampler, nfe) + (("val",) if split == "val" else ())
            out[key] = v
            if counted:
                extra[key] = {"nfe_counted": counted}
        return out, extra

    recs = []
    for seed, (a, b) in enumerate([(0.20, 0.22), (0.25, 0.23), (0.22, 0.26)]):
        vals, extra = swd({"test": a, "val": a + 0.01})
        recs.append(make_record("ddpm", seed, vals, entry_extra=extra, likelihood=("test_nll", 2.9 + seed / 100, "bound")))
        vals, extra = swd({"test": b, "val": b + 0.01}, sampler="dopri5", nfe=20, counted=38)
        recs.append(make_record("flow", seed, vals, entry_extra=extra,
                                likelihood=("test_nll", 2.8 + seed / 100, "estimate", 0.02)))
        recs.append(make_record("vae", seed, {("swd", "decoder", 1): 0.6 + seed / 50}, likelihood=("test_nll", 3.1, "bound")))
        recs.append(make_record("floor", seed, {("swd", None, None): 0.14 + seed / 100}, likelihood=None,
                                source="reference", reference={"label": "noise floor: true distribution"}))
    recs.append(make_record("gan", 0, {("swd", "direct", 1): 0.3}, likelihood=None, status="incomplete", budget_spent=0.36))
    return recs


def test_rich_board_is_byte_deterministic_and_complete(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_leaderboards(rich_records(), a, _registries())
    write_leaderboards(list(reversed(rich_records())), b, _registries())
    for name in sorted(p.name for p in a.iterdir()):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    page = (a / "8gaussians__tiny.md").read_text()
    rows = {r[1]: r for r in (cells(x) for x in table_rows(page, "#")[2:])}
    assert [rows[m][0] for m in ("noise floor: true distribution", "ddpm", "flow", "vae", "gan")] == ["—", "1", "1", "3", "—"]
    assert rows["flow"][4] == "dopri5 @ 38" and rows["flow"][5].startswith("≈ 2.81 ± 0.012 stderr")


# -- backbones: which network each row trained, and boards that hold it fixed ----------------


def backbone_records() -> list[dict]:
    """ddpm and a U-Net VAE on U-Nets, the default VAE on MLPs, an old record naming no backbone,
    and a noise floor (data, no network)."""
    recs = []
    for seed, (ddpm, unet, mlp, floor) in enumerate([(0.20, 0.10, 0.05, 0.02), (0.23, 0.12, 0.08, 0.03)]):
        recs += [
            make_record("ddpm", seed, {("swd", "ddim", 10): ddpm}, backbone="UNet(tiny, 0.635M)"),
            make_record("vae", seed, {("swd", "prior", 1): unet}, hparams={"backbone": "unet"},
                        backbone="UNet(tiny, 1.15M, 2 nets)"),
            make_record("vae", seed, {("swd", "prior", 1): mlp}, backbone="MLP(tiny, 0.153M, 2 nets)"),
            make_record("floor", seed, {("swd", None, None): floor}, likelihood=None, source="reference",
                        reference={"label": "noise floor: true distribution"}),
        ]
    recs.append(make_record("old", 0, {("swd", "s", 1): 0.3}))  # written before records carried a backbone
    return recs


def test_each_row_states_its_backbone_beside_its_parameter_count(tmp_path):
    page, rows = board_rows(tmp_path, backbone_records())
    by = {r["method"]: r for r in rows}
    assert by["ddpm"]["backbone"] == "UNet(tiny, 0.635M)"
    assert by["vae\\[backbone=unet\\]"]["backbone"] == "UNet(tiny, 1.15M, 2 nets)"
    assert by["vae"]["backbone"] == "MLP(tiny, 0.153M, 2 nets)"
    assert by["old"]["backbone"] == "—" and by["noise floor: true distribution"]["backbone"] == "—"
    headers = list(rows[0])
    assert headers.index("params") == headers.index("backbone") + 1
    # the MLP VAE ranks first here, on another network: the caption says what that comparison mixes
    assert [r["method"] for r in rows if r["#"] != "—"][0] == "vae"
    assert "differences mix method and architecture" in page and "--same-backbone" in page
    _, plain = board_rows(tmp_path / "plain", standard_records())
    assert "backbone" not in plain[0]  # no record names one: no column, older boards unchanged


def test_backbone_text_is_escaped(tmp_path):
    recs = backbone_records() + [make_record("evil", 0, {("swd", "s", 1): 0.4}, backbone="Net|x <b>*y*</b>\n(z)")]
    page, rows = board_rows(tmp_path, recs)
    assert {r["method"]: r["backbone"] for r in rows}["evil"] == "Net\\|x &lt;b&gt;\\*y\\*&lt;/b&gt; (z)"
    widths = {len(cells(r)) for r in table_rows(page, "#")}
    assert len(widths) == 1 and "<b>" not in page


def test_same_backbone_makes_one_board_per_backbone_family(tmp_path):
    recs = backbone_records() + [make_record("lower", 0, {("swd", "s", 1): 0.15}, backbone="unet(tiny, 0.1M)")]
    paths = write_leaderboards(recs, tmp_path / "a", _registries(), same_backbone=True)
    assert sorted(p.name for p in paths if p.suffix == ".md") == [
        "8gaussians__tiny__mlp.md", "8gaussians__tiny__unet.md", "8gaussians__tiny__unstated.md", "index.md"]
    unet = (tmp_path / "a" / "8gaussians__tiny__unet.md").read_text()
    assert unet.startswith("# 8gaussians — budget tiny — backbone UNet\n")
    rows = [dict(zip(cells(table_rows(unet, "#")[0]), cells(r))) for r in table_rows(unet, "#")[2:]]
    # families match case-insensitively; the floor row scores data and sits on every board
    assert [r["method"] for r in rows] == ["noise floor: true distribution", "vae\\[backbone=unet\\]", "lower", "ddpm"]
    assert [r["#"] for r in rows] == ["—", "1", "2‡", "3‡"]  # "lower" has one seed: untested
    assert "Only runs that trained a **UNet** network are on this board" in unet and "mix method and" not in unet
    assert "0.05" not in unet.split("## Quality versus sampling cost")[0]  # the MLP VAE's values stay off it
    mlp = (tmp_path / "a" / "8gaussians__tiny__mlp.md").read_text()
    assert [cells(r)[1] for r in table_rows(mlp, "#")[2:]] == ["noise floor: true distribution", "vae"]
    old = (tmp_path / "a" / "8gaussians__tiny__unstated.md").read_text()
    assert [cells(r)[1] for r in table_rows(old, "#")[2:]] == ["noise floor: true distribution", "old"]
    index = (tmp_path / "a" / "index.md").read_text()
    assert "One board per dataset, compute budget and backbone family." in index
    assert "[8gaussians / tiny / UNet](8gaussians__tiny__unet.md)" in index
    # byte-identical from the same records in another order
    write_leaderboards(list(reversed(recs)), tmp_path / "b", _registries(), same_backbone=True)
    for p in sorted((tmp_path / "a").iterdir()):
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name


def test_backbone_option_keeps_one_family(tmp_path):
    results = write(tmp_path / "r", backbone_records())
    res = invoke("leaderboard", results, "--out", tmp_path / "lb", "--backbone", "UNET")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "lb").iterdir()) == [
        "8gaussians__tiny__unet.md", "8gaussians__tiny__unet.png", "index.md"]
    page = (tmp_path / "lb" / "8gaussians__tiny__unet.md").read_text()
    assert {cells(r)[1] for r in table_rows(page, "#")[2:]} == {
        "noise floor: true distribution", "vae\\[backbone=unet\\]", "ddpm"}
    res = invoke("leaderboard", results, "--out", tmp_path / "lb2", "--same-backbone", "--backbone", "mlp")
    assert res.exit_code == 0 and sorted(p.name for p in (tmp_path / "lb2").glob("*.md")) == [
        "8gaussians__tiny__mlp.md", "index.md"]


@pytest.mark.parametrize("family, message", [
    ("resnet", "no run record used a 'resnet' backbone; the records' backbone families: MLP, UNet, unstated"),
    ("UNet(tiny", "--backbone takes a backbone family such as unet or mlp, not 'UNet(tiny'"),
    (" ", "--backbone takes a backbone family"),
])
def test_unknown_backbone_is_one_clear_line(tmp_path, family, message):
    res = invoke("leaderboard", write(tmp_path / "r", backbone_records()), "--out", tmp_path / "lb", "--backbone", family)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "lb").exists()


def guard_rows(page: str) -> list[dict]:
    table = table_rows(page, "method | sampler @ NFE | sampling precision")
    headers = cells(table[0])
    return [dict(zip(headers, cells(r))) for r in table[2:]]


def test_toy_board_shows_far_off_samples_and_mode_coverage_at_the_chosen_setting(tmp_path):
    recs = [make_record("ddim", s, {("swd", "ddim", 10): 0.2 + 0.01 * s, ("swd", "ddim", 50): 0.5,
                                    ("off_support", "ddim", 10): 0.004 * (s + 1), ("off_support", "ddim", 50): 0.9,
                                    ("mode_coverage", "ddim", 10): 1.0, ("mode_coverage", "ddim", 50): 0.5},
                        modality="toy2d", entry_extra={("off_support", "ddim", 10): {"sampling_precision": "float32"}})
            for s in (0, 1)]
    page, _ = board_rows(tmp_path, recs)
    assert "## Sample quality" in page and "off\\_support (lower is better)" in page
    [row] = guard_rows(page)  # only the setting the ranking chose (ddim @ 10), not ddim @ 50
    assert (row["method"], row["sampler @ NFE"], row["sampling precision"]) == ("ddim", "ddim @ 10", "float32")
    assert row["off\\_support"].startswith("0.006 ± ") and row["mode\\_coverage"].startswith("1 ± 0")


def test_text_board_ranked_by_a_model_metric_shows_every_sampled_setting(tmp_path):
    recs = [make_record("mdlm", s, {("impossible_share", "ancestral", 10): 1.0, ("impossible_share", "ancestral", 100): 0.5,
                                    ("gen_ppl", "ancestral", 10): 9.0, ("gen_ppl", "ancestral", 100): 4.0},
                        dataset="synthlang", modality="text", likelihood=("test_bpc", 2.0 + s * 0.1, "bound"),
                        entry_extra={("impossible_share", "ancestral", n): {"sampling_precision": "float64"} for n in (10, 100)})
            for s in (0, 1)]
    write_leaderboards(recs, tmp_path, _registries())
    page = (tmp_path / "synthlang__tiny.md").read_text()
    rows = guard_rows(page)
    assert [(r["sampler @ NFE"], r["sampling precision"]) for r in rows] == [("ancestral @ 10", "float64"),
                                                                           ("ancestral @ 100", "float64")]
    assert [r["impossible\\_share"].split(" ")[0] for r in rows] == ["1", "0.5"]
    assert [r["gen\\_ppl"].split(" ")[0] for r in rows] == ["9", "4"]


def test_boards_without_guard_values_have_no_sample_quality_section(tmp_path):
    page, _ = board_rows(tmp_path, standard_records())
    assert "## Sample quality" not in page


def test_a_declared_likelihood_without_a_value_is_not_shown_as_none(tmp_path):
    recs = []
    for seed in (0, 1):
        broken = make_record("broken", seed, {("swd", "s", 10): 0.5}, likelihood=None)
        broken["likelihood"] = "exact"  # declared, but its evaluation failed
        broken["metrics"].insert(0, {"metric": "likelihood", "version": "1", "name": "likelihood", "sampler": None,
                                     "nfe": None, "value": None, "error": "ValueError: log_likelihood returned NaN or inf"})
        plain = make_record("sampler-only", seed, {("swd", "s", 10): 0.6}, likelihood=None)
        plain["likelihood"] = "none"
        recs += [broken, plain]
    page, rows = board_rows(tmp_path, recs)
    cell = {r["method"]: r["likelihood"] for r in rows}
    assert cell["broken"] == "no value (exact declared)" and cell["sampler-only"] == "none"
    assert "No value = it gives one, but no run has a test value" in page
    assert "likelihood returned NaN or inf" in page  # the reason, under Settings without a value


def test_the_index_counts_incomplete_runs_beside_failed_ones(tmp_path):
    recs = [make_record("a", s, {("swd", "s", 10): 0.5}) for s in (0, 1)]
    recs.append(make_record("b", 0, {("swd", "s", 10): 0.4}, status="incomplete", budget_spent=0.9))
    recs.append(make_record("c", 0, {}, status="failed", error="boom"))
    write_leaderboards(recs, tmp_path, _registries())
    row = next(line for line in (tmp_path / "index.md").read_text().splitlines() if "8gaussians / tiny" in line)
    assert cells(row)[-1] == "1 (+1 incomplete)"
