"""examples/gmbench-example-plugin is found through its entry point alone, and runs.

CI installs the example (``pip install examples/gmbench-example-plugin``); where
it is not installed, the tests that need it skip and say so. The slow test
installs it into a temporary folder (``pip install --target``) and checks the
discovery in a fresh process, so the packaging is tested either way.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gmbench import hookimpl
from gmbench.budget import Budget
from tests.installing import discovered_methods, install_to_target

DIST = "gmbench-example-plugin"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / DIST


def _installed() -> bool:
    try:
        md.distribution(DIST)
    except md.PackageNotFoundError:
        return False
    return True


needs_install = pytest.mark.skipif(
    not _installed(), reason=f"{DIST} is not installed; `pip install -e examples/{DIST}` (CI does) to test its discovery"
)

TINY = Budget(
    name="tiny-example", train_flops={"toy2d": 3e6, "image": 3e7, "text": 3e7},
    batch_size={"toy2d": 128, "image": 32, "text": 16}, wall_clock_s=30, model_size="tiny",
    eval_samples={"toy2d": 500, "image": 64, "text": 16}, nfe_grid=(2,), eval_timeout_s=30,
)


class TinyBudget:
    @hookimpl
    def gmbench_register_budgets(self, register):
        register(TINY)


@needs_install
def test_listed_with_its_distribution():
    from gmbench.cli import main

    result = CliRunner().invoke(main, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    row = {r["name"]: r for r in json.loads(result.output)}["example-gmm"]
    assert (row["distribution"], row["version"]) == (DIST, md.version(DIST))
    assert row["likelihood"] == "exact" and row["modalities"] == ["image"]


@needs_install
def test_runs_a_tiny_budget(tmp_path):
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.records import RunSpec
    from gmbench.runner import run_one

    reg = Registries(make_plugin_manager(extra_plugins=(TinyBudget(),)))  # entry points loaded
    spec = RunSpec("example-gmm", "digits", "tiny-example", 0, hparams=(("components", 16),))
    rec = run_one(spec, reg, tmp_path)
    assert rec["status"] == "ok", rec["error"]
    assert rec["provenance"]["plugin_distribution"] == DIST
    assert 0 < rec["train"]["flops"] <= TINY.train_flops["image"]
    values = {e["name"]: e for e in rec["metrics"] if e.get("value") is not None}
    assert values["test_bpd"]["label"] == "exact" and math.isfinite(values["test_bpd"]["value"])


@pytest.mark.slow
def test_packaging_declares_the_entry_point(tmp_path):
    """Build and install the example into a private folder; a fresh process must discover it."""
    source, target = tmp_path / "src", tmp_path / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))  # builds write here
    install_to_target(source, target)
    row = discovered_methods(target)["example-gmm"]
    assert row["distribution"] == DIST
