"""Install a plugin package into a throwaway folder and list what a fresh gmbench process discovers.

Shared by the tests of the example plugin and of `gmbench new-plugin`: discovery must
work through the installed entry point alone, in a process that never imported the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def install_to_target(source: Path, target: Path) -> None:
    """``pip install --target`` without touching the test venv; skip if this machine cannot build."""
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=1800,  # a guard against a hung pip, far above any slow machine
    )
    if pip.returncode != 0:
        pytest.skip(f"cannot build packages here (pip: {pip.stderr.strip().splitlines()[-1:]})")


def discovered_methods(site: Path) -> dict[str, dict]:
    """`gmbench plugins list --json` of a fresh process with ``site`` on its path, by method name."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", "from gmbench.cli import main; main()", "plugins", "list", "--json"],
                         capture_output=True, text=True, env=env, timeout=1800)  # only a guard against a hang
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout)}
