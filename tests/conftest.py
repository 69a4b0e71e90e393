"""Shared fixtures: registries with throwaway plugins, never installed ones."""

from __future__ import annotations

import os

import pytest

# Hub datasets must never try the network in tests.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Metric caches (reference statistics, the reference language model) go to a
# per-session folder, never the user's ~/.cache/gmbench.
if "GMBENCH_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["GMBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="gmbench-test-cache-")


# Under pytest-xdist (`-n N`) each worker is its own process: one torch thread each, so
# N workers on N cores do not oversubscribe them (CI runs `-n auto`).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# No test verdict may depend on machine speed: wall-clock caps (safety nets, not the
# fairness rule) run 50x above their values, far above any plausible run on a loaded
# machine. Tests of the caps themselves set GMBENCH_CAP_SCALE=1 (see `real_caps`).
os.environ.setdefault("GMBENCH_CAP_SCALE", "50")


@pytest.fixture
def real_caps(monkeypatch):
    """Caps at their stated values, for tests of the caps themselves."""
    monkeypatch.setenv("GMBENCH_CAP_SCALE", "1")


@pytest.fixture
def fake_registries():
    """Registries holding only the fake methods (no entry points) plus a tiny budget."""
    from gmbench.plugins import Registries, make_plugin_manager
    from tests.plugins.fake_methods import FakePlugin, TinyBudgetPlugin

    def make(*classes):
        pm = make_plugin_manager(extra_plugins=(FakePlugin(*classes), TinyBudgetPlugin()), load_entrypoints=False)
        return Registries(pm)

    return make
