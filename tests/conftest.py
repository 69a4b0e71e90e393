"""Shared fixtures: registries with throwaway plugins, never installed ones."""

from __future__ import annotations

import os

import pytest

# Hub datasets must never try the network in tests.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Metric caches (reference statistics, the reference language model) go to a
# per-session folder, never the user's ~/.cache/gmbench.
# pytest-xdist's workers of one test run share it (the caches are written atomically, and
# the reference language model trains under a lock), so each reference is built once per
# run rather than once per worker.
if "GMBENCH_CACHE_DIR" not in os.environ:
    import tempfile

    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id:
        shared = os.path.join(tempfile.gettempdir(), f"gmbench-test-cache-{run_id}")
        os.makedirs(shared, exist_ok=True)
        os.environ["GMBENCH_CACHE_DIR"] = shared
    else:
        os.environ["GMBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="gmbench-test-cache-")


# Under pytest-xdist (`-n N`) each worker is its own process: one torch thread each, so
# N workers on N cores do not oversubscribe them (CI runs `-n auto`).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # and the host's thread policy must not raise it: a test that invokes `gmbench run`
    # in-process would otherwise set this worker's torch to every core of the machine for
    # the rest of the session, and N workers x N threads spin against each other (measured:
    # the learns-at-smoke tests of the text methods ran 4-8x slower after such a test).
    # tests/test_threads.py tests the policy itself in fresh processes with it switched on.
    os.environ.setdefault("GMBENCH_THREADS_POLICY", "off")


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
