"""CI's regression gate: fresh smoke runs of one method per modality, compared
with the baseline committed under leaderboards/baseline-smoke/.

A change that silently breaks a method's training, sampler or likelihood moves
its metrics beyond the compare tolerance and fails this test. After an
intended change, regenerate the baseline (leaderboards/README.md says how).
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from gmbench.cli import main

BASELINE = Path(__file__).resolve().parents[1] / "leaderboards" / "baseline-smoke"
# one method per modality keeps CI short (each smoke run trains for real); every other built-in
# method is guarded by its own learns-at-smoke test in tests/test_<method>.py
GATED = (("ddpm", "8gaussians"), ("vae", "digits"), ("mdlm", "synthlang"))


def test_smoke_runs_do_not_regress_against_the_committed_baseline(tmp_path):
    assert len(list(BASELINE.glob("*.json"))) == len(GATED), "baseline records missing: see leaderboards/README.md"
    for method, dataset in GATED:
        res = CliRunner().invoke(main, ["run", "--plugins", method, "--datasets", dataset, "--budget", "smoke",
                                        "--out", str(tmp_path)])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["compare", str(BASELINE), str(tmp_path)])
    assert res.exit_code == 0, res.output
