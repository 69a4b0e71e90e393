"""scripts/publish_standard.sh, the ready GPU publication (issue 14.4): what it would run, and that
it refuses a machine without CUDA in one line instead of publishing CPU numbers as GPU boards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "publish_standard.sh"


def _run(tmp_path, **env):
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # this venv's gmbench/python
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "0,1"], capture_output=True, text=True,
                          env={**os.environ, "PATH": path, **env}, timeout=120)


def test_dry_run_lists_every_image_claims_run_on_the_gpu_at_standard(tmp_path):
    res = _run(tmp_path, DRY_RUN="1")
    assert res.returncode == 0, res.stderr
    commands = [line[2:] for line in res.stdout.splitlines() if line.startswith("+ ")]
    runs = [c for c in commands if c.startswith("gmbench run")]
    assert all("--budget standard" in c and "--device cuda" in c and "--seeds 0,1" in c for c in runs[:-2])
    assert "--plugins all --datasets digits" in runs[0] and any("--datasets cifar10" in c for c in runs)
    # the ablations the image claims compare, as the CPU publication runs them
    small = (ROOT / "scripts" / "publish_small.sh").read_text()
    digits_sets = {tuple(re.findall(r"--set (\S+)", line)) for line in small.splitlines()
                   if "--datasets $IMAGE" in line and "--set" in line}
    ours = {tuple(re.findall(r"--set (\S+)", c)) for c in runs if "--datasets digits" in c and "--set" in c}
    assert digits_sets <= ours, digits_sets - ours
    assert any(c.startswith("gmbench floor --datasets digits --budget standard") for c in commands)
    assert any(c.startswith("gmbench leaderboard") for c in commands) and any(c.startswith("gmbench claims") for c in commands)
    timed = [c for c in commands if c.startswith("time gmbench run --plugins all")]
    assert [re.search(r"--budget (\w+) --device cuda", c).group(1) for c in timed] == ["smoke", "small"]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would start publishing, not refuse")
    res = _run(tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "no CUDA device here" in res.stderr and "GMBENCH_DEVICE=cpu BUDGET=smoke" in res.stderr
    assert not (tmp_path / "out").exists()
