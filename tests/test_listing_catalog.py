"""Listing commands answer without importing torch once the catalog is stored (issue 15.6).

``gmbench plugins|datasets|budgets list`` used to import every plugin (and torch) on
each call. The first call now builds the listings and stores them
(``gmbench.catalog``); later calls read them, and any change to the installed plugins
or their source files rebuilds them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

from gmbench import catalog

LISTINGS = ("plugins list", "plugins list --json", "datasets list", "datasets list --json",
            "budgets list", "budgets list --json")

# every listing command in one fresh interpreter; reports whether torch got imported
SCRIPT = """
import json, sys
from click.testing import CliRunner
from gmbench.cli import main
out = {}
for cmd in %r:
    res = CliRunner().invoke(main, cmd.split())
    assert res.exit_code == 0, (cmd, res.output)
    out[cmd] = res.stdout
print(json.dumps({"torch": "torch" in sys.modules, "out": out}))
""" % (LISTINGS,)


def _listings(cache_dir) -> dict:
    env = {**os.environ, "GMBENCH_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_listing_commands_import_no_torch_once_the_catalog_is_stored(tmp_path):
    first = _listings(tmp_path)  # builds the catalog from the live registries: imports the plugins
    assert first["torch"], "the first listing must build from the live plugins"
    assert (tmp_path / catalog.CATALOG_FILE).exists()
    second = _listings(tmp_path)
    assert not second["torch"], "a stored catalog must answer without importing torch"
    assert second["out"] == first["out"]  # the same answer, byte for byte
    names = {r["name"] for r in json.loads(second["out"]["plugins list --json"])}
    assert {"ddpm", "vae", "mdlm"} <= names
    budgets = [r["name"] for r in json.loads(second["out"]["budgets list --json"])]
    assert budgets[:4] == ["smoke", "small", "standard", "large"]  # size order


def test_a_changed_source_file_changes_the_key(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("X = 1\n")
    before = catalog.catalog_key([pkg])
    assert catalog.catalog_key([pkg]) == before  # stable while nothing changes
    (pkg / "m.py").write_text("X = 22\n")
    assert catalog.catalog_key([pkg]) != before
    (pkg / "n.py").write_text("")
    assert catalog.catalog_key([pkg]) != before


def test_stale_or_corrupt_catalog_is_rebuilt_and_warnings_are_repeated(tmp_path, monkeypatch):
    monkeypatch.setenv("GMBENCH_CACHE_DIR", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        warnings.warn("gmbench: plugin 'x' failed to import: boom")
        return {"plugins": {"json": [{"name": "a"}], "table": [{"name": "a"}]}}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert catalog.load_catalog(build)["plugins"]["json"] == [{"name": "a"}]
        assert catalog.load_catalog(build)["plugins"]["json"] == [{"name": "a"}]
    assert len(calls) == 1  # the second answer came from the store
    assert [str(w.message) for w in caught].count("gmbench: plugin 'x' failed to import: boom") == 2

    path = tmp_path / catalog.CATALOG_FILE
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "key": "another install"}))
    with warnings.catch_warnings(record=True):
        catalog.load_catalog(build)
    assert len(calls) == 2  # a key mismatch rebuilds
    path.write_text("{not json")
    with warnings.catch_warnings(record=True):
        catalog.load_catalog(build)
    assert len(calls) == 3  # so does a corrupt file


def test_an_unwritable_cache_only_costs_the_rebuild(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GMBENCH_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    assert catalog.load_catalog(lambda: {"k": 1}) == {"k": 1}
