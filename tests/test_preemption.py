"""Runs that survive real machines: the wall-clock cap keeps work, a killed run resumes
bit-identically from its checkpoint, no record is ever lost, concurrent writers do not clash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gmbench.eval_journal import EvalJournal, state_sha256
from gmbench.method import SamplerInfo
from gmbench.plugins import Registries, make_plugin_manager
from gmbench.records import RunSpec, load_record, write_record
from gmbench.runner import checkpoint_folder, expand, run_all, run_one
from tests.plugins.fake_methods import TINY_BUDGET, FakePlugin, GaussianFit

ROOT = Path(__file__).resolve().parents[1]
# a budget of a few hundred steps, with a cap small enough to stop training early at scale 1
CAPPED = replace(TINY_BUDGET, name="capped", wall_clock_s=1e-6)


class Noisy(GaussianFit):
    """GaussianFit whose steps also consume the global torch RNG (as real methods do),
    so that a resume that lost an RNG state would give different numbers."""

    name = "noisy"

    def training_step(self, stage, batch, step):
        jitter = 0.01 * torch.randn_like(batch)
        return super().training_step(stage, batch + jitter, step)


class DiesOnce(Noisy):
    """Killed by SIGKILL at step 7 the first time (a preempted node), fine afterwards."""

    name = "dies-once"
    marker = os.environ.get("GMBENCH_TEST_DIE_MARKER", "")

    def training_step(self, stage, batch, step):
        if step == 7 and self.marker and not Path(self.marker).exists():
            Path(self.marker).write_text("died")
            os.kill(os.getpid(), 9)
        return super().training_step(stage, batch, step)


class DiesWhileSampling(Noisy):
    """Two samplers over the NFE grid (2, 4): four settings, evaluated walk@2, walk-half@2, walk@4,
    walk-half@4. SIGKILLed while drawing walk@4's evaluation samples the first time (a node
    preempted during evaluation), fine afterwards. ``$GMBENCH_TEST_SAMPLE_LOG`` lists the
    settings whose evaluation samples were drawn."""

    name = "dies-sampling"
    samplers = (SamplerInfo("walk"), SamplerInfo("walk-half", params={"scale": 0.5}))

    def sample(self, n, sampler, nfe, generator):
        marker, log = os.environ.get("GMBENCH_TEST_DIE_MARKER"), os.environ.get("GMBENCH_TEST_SAMPLE_LOG")
        if n > 1 and log:  # not the host's one-sample warm-up and latency calls
            with open(log, "a") as f:
                f.write(f"{sampler}@{nfe}\n")
        if n > 1 and (sampler, nfe) == ("walk", 4) and marker and not Path(marker).exists():
            Path(marker).write_text("died")
            os.kill(os.getpid(), 9)
        return super().sample(n, "direct", 1, generator) * (0.5 if sampler == "walk-half" else 1.0)


class Budgets:
    from gmbench import hookimpl

    @hookimpl
    def gmbench_register_budgets(self, register):
        register(TINY_BUDGET)
        register(CAPPED)


def registries():
    return Registries(make_plugin_manager((FakePlugin(Noisy, DiesOnce, DiesWhileSampling), Budgets()),
                                          load_entrypoints=False))


def run_in_child(method: str, out: Path, resume: bool = False, **env: str) -> subprocess.CompletedProcess:
    """Run ``method`` on 8gaussians at ``tiny-test`` in a fresh child process, as a command
    (and a resumed command) would run; ``env`` arms the method's kill switch."""
    script = textwrap.dedent(f"""
        from gmbench.runner import expand, run_all
        from tests.test_preemption import registries
        reg = registries()
        run_all(expand(reg, plugins={method!r}, datasets="8gaussians", budget="tiny-test"), reg, {str(out)!r},
                resume={resume!r})
    """)
    return subprocess.run([sys.executable, "-c", script], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                          cwd=ROOT, capture_output=True, text=True)


def run_until_killed(method: str, out: Path, **env: str) -> None:
    """``run_in_child`` where the method SIGKILLs itself (a preempted node: no Python cleanup runs)."""
    proc = run_in_child(method, out, **env)
    assert proc.returncode == -9, proc.stderr[-2000:]


def _values(record: dict) -> list:
    return sorted((e["name"], e.get("split"), e["sampler"], e["nfe"], e["value"]) for e in record["metrics"])


def test_a_run_at_its_wall_clock_cap_is_evaluated_and_marked_incomplete(tmp_path, real_caps):
    reg = registries()
    rec = run_one(RunSpec("noisy", "8gaussians", "capped", 0), reg, tmp_path)
    assert rec["status"] == "incomplete", rec.get("error")
    assert "wall-clock cap" in rec["train"]["stopped"]
    assert 0 <= rec["budget_spent"] == rec["train"]["budget_spent"] < 0.5
    assert any(e["name"] == "swd" and e["value"] is not None for e in rec["metrics"])  # still scored
    # its checkpoint is kept for --resume
    assert (checkpoint_folder(tmp_path, RunSpec("noisy", "8gaussians", "capped", 0)) / "state.json").is_file()


def test_resume_continues_an_incomplete_run_to_the_same_numbers_as_an_uninterrupted_one(tmp_path, monkeypatch):
    spec = RunSpec("noisy", "8gaussians", "capped", 0)
    reg = registries()
    monkeypatch.setenv("GMBENCH_CAP_SCALE", "1e12")  # the cap far away: the run finishes
    # (through the same executor as the resumed run: it sets the threads, and BLAS sums depend on them)
    whole = run_all(expand(reg, plugins="noisy", datasets="8gaussians", budget="capped"), reg, tmp_path / "whole")[0]
    assert whole["status"] == "ok"

    monkeypatch.setenv("GMBENCH_CAP_SCALE", "1")  # stopped at once: incomplete
    cut = run_all(expand(reg, plugins="noisy", datasets="8gaussians", budget="capped"), reg, tmp_path / "cut")[0]
    assert cut["status"] == "incomplete"
    monkeypatch.setenv("GMBENCH_CAP_SCALE", "1e12")
    resumed = run_all(expand(reg, plugins="noisy", datasets="8gaussians", budget="capped"), reg, tmp_path / "cut",
                      resume=True)[0]
    assert resumed["status"] == "ok" and resumed["resumed"] is True
    assert resumed["train"]["steps"] == whole["train"]["steps"]
    assert resumed["train"]["flops"] == whole["train"]["flops"]
    assert _values(resumed) == _values(whole)  # bit-identical metrics
    assert not checkpoint_folder(tmp_path / "cut", spec).exists()  # removed once the record is ok
    # the incomplete attempt was not lost: it moved to attempts/
    (attempt,) = (tmp_path / "cut" / "attempts").glob("*.json")
    assert load_record(attempt)["status"] == "incomplete"


def test_a_sigkilled_worker_resumes_from_its_checkpoint_bit_identically(tmp_path, monkeypatch):
    """A run killed mid-training (like a preempted Slurm or Ray node) and resumed gives the
    uninterrupted run's metrics exactly."""
    spec = RunSpec("dies-once", "8gaussians", "tiny-test", 0)
    matrix = expand(registries(), plugins="dies-once", datasets="8gaussians", budget="tiny-test")
    whole = run_all(matrix, registries(), tmp_path / "whole")[0]  # no marker: never dies
    assert whole["status"] == "ok"

    out = tmp_path / "killed"
    marker = tmp_path / "died"
    run_until_killed("dies-once", out, GMBENCH_TEST_DIE_MARKER=str(marker), GMBENCH_CHECKPOINT_EVERY_STEPS="5")
    assert marker.exists() and not (out / spec.filename).exists()  # killed before writing a record
    sidecar = json.loads((checkpoint_folder(out, spec) / "state.json").read_text())
    assert sidecar["meter"]["steps"] == 5  # the last checkpoint before the kill at step 7

    monkeypatch.setenv("GMBENCH_TEST_DIE_MARKER", str(marker))
    resumed = run_all(matrix, registries(), out, resume=True)[0]
    assert resumed["status"] == "ok" and resumed["resumed"] is True
    assert resumed["train"]["steps"] == whole["train"]["steps"]
    assert _values(resumed) == _values(whole)


def test_a_run_killed_while_evaluating_resumes_without_redoing_the_settings_it_finished(tmp_path, monkeypatch):
    """Killed (SIGKILL) while sampling its third setting: ``--resume`` takes the trained weights
    from the stage-end checkpoint and the two finished settings from the evaluation journal,
    draws only the last two settings, then scores the model metrics (they come after every
    sample, docs/integrity.md, so the killed attempt had none), and writes the uninterrupted
    run's record values exactly."""
    spec = RunSpec("dies-sampling", "8gaussians", "tiny-test", 0)
    matrix = expand(registries(), plugins="dies-sampling", datasets="8gaussians", budget="tiny-test")
    monkeypatch.delenv("GMBENCH_TEST_DIE_MARKER", raising=False)
    monkeypatch.delenv("GMBENCH_TEST_SAMPLE_LOG", raising=False)
    whole = run_all(matrix, registries(), tmp_path / "whole")[0]  # no marker: never dies
    assert whole["status"] == "ok" and "eval_resumed" not in whole

    out, marker, log = tmp_path / "killed", tmp_path / "died", tmp_path / "sampled.txt"
    run_until_killed("dies-sampling", out, GMBENCH_TEST_DIE_MARKER=str(marker), GMBENCH_TEST_SAMPLE_LOG=str(log))
    assert not (out / spec.filename).exists()  # killed before writing a record
    assert log.read_text().split() == ["walk@2", "walk-half@2", "walk@4"]
    journal = json.loads((checkpoint_folder(out, spec) / "eval.json").read_text())
    assert sorted(journal["cells"]) == ["walk-half@2", "walk@2"]
    assert journal["model"] is None  # the likelihood is scored after the last sample is drawn

    log.unlink()
    # resumed in a fresh process, as `gmbench run --resume` is: the journal is keyed on the
    # process's provenance (threads...), which tests run earlier in this process may have changed
    proc = run_in_child("dies-sampling", out, resume=True, GMBENCH_TEST_DIE_MARKER=str(marker),  # exists: no kill
                        GMBENCH_TEST_SAMPLE_LOG=str(log))
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = load_record(out / spec.filename)
    assert resumed["status"] == "ok" and resumed["resumed"] is True
    assert log.read_text().split() == ["walk@4", "walk-half@4"]  # only what the killed attempt had not finished
    assert resumed["eval_resumed"]["model_metrics"] is False and resumed["eval_resumed"]["settings"] == 2
    assert any(e["name"] == "test_nll" for e in resumed["metrics"])  # scored by the resumed attempt
    assert _values(resumed) == _values(whole)  # bit-identical metrics
    assert [(c["sampler"], c["nfe"]) for c in resumed["cost"]["sampling"]] == \
        [(c["sampler"], c["nfe"]) for c in whole["cost"]["sampling"]]
    assert not checkpoint_folder(out, spec).exists()  # journal and checkpoint gone with the ok record


def test_an_evaluation_journal_is_used_only_with_the_weights_it_was_written_for(tmp_path):
    net = torch.nn.Linear(3, 2)
    key = {"weights": state_sha256(net), "fingerprint": "abc"}
    journal = EvalJournal.open(tmp_path, key)
    journal.record_model([{"name": "test_nll", "value": 1.5}], 2.0)
    journal.record_cell("euler", 10, [{"name": "swd", "value": 0.25}], {"sampler": "euler", "nfe": 10}, 3.0, 1.0)
    again = EvalJournal.open(tmp_path, key)
    assert again.elapsed_s == 6.0 and again.take_cell("euler", 10)["entries"][0]["value"] == 0.25
    assert again.take_cell("euler", 20) is None and again.summary()["settings"] == 1

    with torch.no_grad():
        net.weight[0, 0] += 1e-6  # trained further: not the weights the journal scored
    other = EvalJournal.open(tmp_path, {**key, "weights": state_sha256(net)})
    assert other.model is None and other.cells == {} and other.elapsed_s == 0.0
    assert EvalJournal.open(tmp_path, {**key, "fingerprint": "another protocol"}).cells == {}

    (tmp_path / "eval.json").write_text('{"version": 1, "key": ')  # torn by hand: ignored, not an error
    assert EvalJournal.open(tmp_path, key).cells == {}


def test_an_evaluation_journal_keeps_no_part_with_an_error(tmp_path):
    """A likelihood cut at its share of the cap, a setting whose sampler or metric failed: a
    resumed attempt (perhaps with larger caps) computes them again."""
    journal = EvalJournal.open(tmp_path, {"weights": "w", "fingerprint": "f"})
    journal.record_model([{"name": "likelihood", "value": None, "error": "not evaluated: the likelihood used up its share"}], 9.0)
    journal.record_cell("euler", 10, [{"name": "*", "value": None, "error": "OutOfMemoryError: ..."}], None, 5.0, 0.0)
    journal.record_cell("euler", 20, [{"name": "fid", "value": None, "error": "ValueError: boom"}], {"nfe": 20}, 5.0, 1.0)
    assert journal.model is None and journal.cells == {} and not (tmp_path / "eval.json").exists()
    journal.record_cell("euler", 50, [{"name": "fid", "value": 3.0}, {"name": "isc", "value": None, "skipped": "no weights"}],
                        {"nfe": 50}, 5.0, 1.0)
    assert list(EvalJournal.open(tmp_path, journal.key).cells) == ["euler@50"]


def test_the_state_hash_covers_extra_state(tmp_path):
    class WithExtra(torch.nn.Linear):
        def __init__(self, tag):
            super().__init__(2, 2)
            self.tag = tag

        def get_extra_state(self):
            return {"tag": self.tag}

        def set_extra_state(self, state):
            self.tag = state["tag"]

    torch.manual_seed(0)
    a = WithExtra("a")
    torch.manual_seed(0)
    b = WithExtra("b")
    assert state_sha256(a) != state_sha256(b) and state_sha256(a) == state_sha256(a)


def test_an_evaluation_journal_that_cannot_be_written_only_warns(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    journal = EvalJournal.open(tmp_path / "not-a-folder", {"weights": "w", "fingerprint": "f"})
    with pytest.warns(UserWarning, match="will start over"):
        journal.record_model([], 0.1)
    journal.record_cell("euler", 10, [], None, 0.1, 0.0)  # dropped quietly after the first warning
    assert journal.broken


def test_without_resume_a_leftover_checkpoint_is_discarded(tmp_path, real_caps):
    reg = registries()
    spec = RunSpec("noisy", "8gaussians", "capped", 0)
    run_one(spec, reg, tmp_path)
    assert checkpoint_folder(tmp_path, spec).exists()
    rec = run_all(expand(reg, plugins="noisy", datasets="8gaussians", budget="capped"), reg, tmp_path)[0]
    assert rec["resumed"] is False


def _ok(spec):
    return {"method": spec.method, "dataset": spec.dataset, "budget": spec.budget, "seed": spec.seed, "status": "ok",
            "metrics": [{"name": "swd", "value": 0.1}]}


def test_a_failed_attempt_never_replaces_an_ok_record(tmp_path):
    spec = RunSpec("noisy", "8gaussians", "tiny-test", 0)
    write_record(tmp_path, spec, _ok(spec))
    where = write_record(tmp_path, spec, {**_ok(spec), "status": "failed", "error": "boom"})
    assert load_record(tmp_path / spec.filename)["status"] == "ok"
    assert where.parent.name == "attempts" and load_record(where)["error"] == "boom"
    # a new ok record replaces the old one, which is kept too
    write_record(tmp_path, spec, {**_ok(spec), "metrics": [{"name": "swd", "value": 0.2}]})
    assert load_record(tmp_path / spec.filename)["metrics"][0]["value"] == 0.2
    kept = sorted(load_record(p)["status"] for p in (tmp_path / "attempts").glob("*.json"))
    assert kept == ["failed", "ok"]


def test_ok_runs_are_kept_unless_forced(tmp_path):
    reg = registries()
    matrix = expand(reg, plugins="noisy", datasets="8gaussians", budget="tiny-test")
    first = run_all(matrix, reg, tmp_path)
    assert [r["status"] for r in first] == ["ok"]
    assert run_all(matrix, reg, tmp_path) == []  # skipped: already ok
    again = run_all(matrix, reg, tmp_path, force=True)
    assert [r["status"] for r in again] == ["ok"]
    assert len(list((tmp_path / "attempts").glob("*.json"))) == 1


def test_two_processes_writing_into_one_folder_do_not_clash(tmp_path):
    """Two `gmbench run`-like processes on the same specs and folder: every spec is run once
    (the other process skips it while it is locked, or finds it done), no record is torn."""
    out = tmp_path / "shared"
    script = textwrap.dedent(f"""
        import json, sys
        from tests.test_preemption import registries
        from gmbench.runner import expand, run_all
        reg = registries()
        recs = run_all(expand(reg, plugins="noisy", datasets="8gaussians,moons", budget="tiny-test", seeds=[0, 1, 2]),
                       reg, {str(out)!r})
        print(json.dumps([[r["method"], r["dataset"], r["seed"], r["status"]] for r in recs]))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=1800) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    ran = [tuple(r) for o in outputs for r in json.loads(o[0].strip().splitlines()[-1])]
    ok = [r for r in ran if r[3] == "ok"]
    assert len(ok) == len(set(ok)) == 6  # every spec run exactly once, by one of the two
    assert all(r[3] in ("ok", "skipped") for r in ran)
    records = sorted(p.name for p in out.glob("*.json"))
    assert len(records) == 6 and not (out / "attempts").exists()
    for p in out.glob("*.json"):
        assert load_record(p)["status"] == "ok"
