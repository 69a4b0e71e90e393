"""Progress while it works (issue 15.7): training and evaluation report to the
reporter in effect, bars only at a terminal and never under --quiet, an ETA on the
per-run lines, and a final table that says what its metric is and why rows failed."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

from gmbench import progress
from gmbench.cli import main
from gmbench.cli.run import RunETA
from gmbench.records import RunSpec
from gmbench.runner import run_one


class Recorder(progress.Reporter):
    """Keeps every bar's label, total and the advances it got."""

    def __init__(self) -> None:
        self.tasks: list[dict] = []

    def task(self, label, total, unit="it"):
        entry = {"label": label, "total": total, "unit": unit, "done": 0.0, "notes": [], "closed": False}
        self.tasks.append(entry)

        class T(progress.Task):
            def advance(self, amount=1.0, note=None):
                entry["done"] += amount
                if note is not None:
                    entry["notes"].append(note)

            def close(self):
                entry["closed"] = True

        return T()


@pytest.fixture
def registries(fake_registries):
    return fake_registries()


def test_a_run_reports_training_flops_and_each_evaluation_setting(registries, tmp_path):
    rec_ = Recorder()
    with progress.reporting(rec_):
        rec = run_one(RunSpec("gaussfit", "8gaussians", "tiny-test", 0), registries, tmp_path)
    assert rec["status"] == "ok", rec.get("error")
    train_bars = [t for t in rec_.tasks if " stage " in t["label"]]
    (stage,) = rec["train"]["stages"]
    (bar,) = train_bars
    assert bar["label"] == f"gaussfit stage {stage['name']}" and bar["unit"] == "FLOP"
    assert bar["total"] == pytest.approx(stage["flops_allowed"])
    assert bar["done"] == pytest.approx(stage["flops"])  # every counted FLOP, no more
    assert bar["notes"][-1] == f"step {stage['steps']}" and bar["closed"]
    (ev,) = [t for t in rec_.tasks if t["label"] == "gaussfit eval"]
    settings = {(c["sampler"], c["nfe"]) for c in rec["cost"]["sampling"]}
    assert ev["done"] == ev["total"] and ev["closed"]
    assert {f"{s}@{n}" for s, n in settings} <= set(ev["notes"])


def test_nothing_is_reported_without_a_reporter(registries, tmp_path, capfd):
    rec = run_one(RunSpec("gaussfit", "8gaussians", "tiny-test", 0), registries, tmp_path)  # the default: silent
    assert rec["status"] == "ok"
    err = capfd.readouterr().err
    assert "gaussfit stage" not in err and "gaussfit eval" not in err


def test_bars_only_for_a_terminal_and_never_when_quiet():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress.wanted(False, Tty()) and not progress.wanted(True, Tty())
    assert not progress.wanted(False, io.StringIO())  # CI logs, pipes


def test_tqdm_bar_shows_stage_and_eta():
    out = io.StringIO()
    bar = progress.TqdmReporter(out, mininterval=0).task("ddpm train main", total=4e9, unit="FLOP")
    bar.advance(1e9, note="step 10")
    bar.close()
    text = out.getvalue()
    assert "ddpm train main" in text and "step 10" in text and "1.00G/4.00G" in text and "FLOP/s" in text


def test_eta_is_the_mean_run_time_times_the_runs_left():
    now = [0.0]
    eta = RunETA(clock=lambda: now[0])
    now[0] = 10.0
    assert eta.after(1, 5, was_skipped=True) == ""  # a record already done took no time
    assert eta.after(2, 5, was_skipped=False) == ", ETA 30s"  # 10 s for one run, 3 left
    now[0] = 100.0
    assert eta.after(3, 5, was_skipped=False) == ", ETA 1m40s"  # 50 s a run, 2 left
    assert eta.after(5, 5, was_skipped=False) == ""


def test_quiet_run_prints_the_table_and_summary_but_no_per_run_lines(fake_registries, tmp_path, monkeypatch):
    monkeypatch.setattr("gmbench.plugins.Registries", lambda: fake_registries())
    args = ["run", "--plugins", "gaussfit", "--datasets", "8gaussians", "--budget", "tiny-test", "--out", str(tmp_path)]
    loud = CliRunner().invoke(main, args + ["--force"])
    assert loud.exit_code == 0, loud.output
    assert "[1/1] gaussfit on 8gaussians seed 0: ok in" in loud.output
    res = CliRunner().invoke(main, args + ["--force", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "[1/1]" not in res.output
    assert "ranked by swd (sliced Wasserstein-2 to the test split" in res.output and "lower is better" in res.output
    assert res.output.strip().splitlines()[-1].startswith("gmbench: 1 ok, 0 failed")


def test_the_final_table_shows_a_failed_runs_error(fake_registries, tmp_path, monkeypatch):
    from gmbench.cli.run import summary_table

    reg = fake_registries()
    rec = run_one(RunSpec("broken-train", "8gaussians", "tiny-test", 0), reg, tmp_path)
    assert rec["status"] == "failed"
    table = summary_table(reg, tmp_path, [rec["spec_hash"]])
    row = next(line for line in table.splitlines() if line.startswith("broken-train"))
    assert "failed: " + rec["error"][:40] in row
