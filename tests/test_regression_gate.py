"""CI's regression gate: fresh smoke runs of one method per modality, compared
with the baseline committed under leaderboards/baseline-smoke/.

A change that silently breaks a method's training, sampler or likelihood moves
its metrics beyond the compare tolerance and fails this test. After an
intended change, regenerate the baseline (leaderboards/README.md says how).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gmbench.cli import main

BASELINE = Path(__file__).resolve().parents[1] / "leaderboards" / "baseline-smoke"
# one method per modality keeps CI short (each smoke run trains for real); every other built-in
# method is guarded by its own learns-at-smoke test in tests/test_<method>.py
GATED = (("ddpm", "8gaussians"), ("vae", "digits"), ("mdlm", "synthlang"))


def test_the_baseline_holds_one_record_per_gated_run():
    names = sorted(p.name.split("__smoke__")[0] for p in BASELINE.glob("*.json"))
    assert names == sorted(f"{m}__{d}" for m, d in GATED), "baseline records missing: see leaderboards/README.md"


# one test per gated run, so that pytest-xdist spreads the three trainings over its workers
@pytest.mark.parametrize(("method", "dataset"), GATED, ids=[f"{m}-{d}" for m, d in GATED])
def test_smoke_run_does_not_regress_against_the_committed_baseline(method, dataset, tmp_path):
    [baseline] = BASELINE.glob(f"{method}__{dataset}__smoke__*.json")
    res = CliRunner().invoke(main, ["run", "--plugins", method, "--datasets", dataset, "--budget", "smoke",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    [fresh] = tmp_path.glob(f"{method}__{dataset}__smoke__*.json")
    res = CliRunner().invoke(main, ["compare", str(baseline), str(fresh)])
    assert res.exit_code == 0, res.output
