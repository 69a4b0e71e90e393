"""The thread policy: each run's torch threads are its share of the CPUs this process
may use (affinity, cgroup quota) over the runs in flight; ``--threads`` overrides.

The rule and the cgroup reader are tested with fake inputs; applying it, with a
fresh process for each case (torch's inter-op pool is sized once per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gmbench.execution import ExecutionError, RunOptions, make_executor
from gmbench.execution.threads import affinity_cores, cgroup_quota, decide_threads

REPO = Path(__file__).resolve().parents[1]


# -- the rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "quota", "jobs", "cpus_per_run", "expected"),
    [
        (8, None, 1, None, (8, "affinity")),
        (8, 1.5, 1, None, (1, "cgroup quota")),  # floor of the quota
        (8, 0.2, 1, None, (1, "cgroup quota")),  # at least one thread
        (2, None, 2, None, (1, "affinity")),  # affinity {0, 1}, --jobs 2: one each
        (8, None, 3, None, (2, "affinity")),  # 8/3 rounds down
        (3, None, 3, None, (1, "affinity")),
        (2, None, 5, None, (1, "affinity")),  # more runs than cores: still one
        (8, 6.0, 2, None, (3, "cgroup quota")),  # the quota is shared by the jobs too
        (4, 16.0, 2, None, (2, "affinity")),  # a quota above the cores does not bind
        (8, None, 1, 3.0, (3, "--cpus-per-run")),  # Ray: what the task reserved
        (8, None, 1, 0.5, (1, "--cpus-per-run")),  # a fractional CPU still gets a thread
        (2, None, 1, 4.0, (2, "affinity")),  # ...but not more than the node lets it use
        (16, 2.5, 1, 4.0, (2, "cgroup quota")),
    ],
)
def test_each_run_gets_its_share_of_the_cpus(cores, quota, jobs, cpus_per_run, expected):
    got = decide_threads(cores, quota, jobs=jobs, cpus_per_run=cpus_per_run)
    assert (got["intra_op"], got["source"]) == expected
    assert got["inter_op"] == 1


def test_threads_override_wins_over_every_share():
    assert decide_threads(2, 0.5, jobs=4, override=6) == {"intra_op": 6, "inter_op": 1, "source": "--threads"}
    assert decide_threads(64, None, cpus_per_run=8, override=1)["intra_op"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cores": 0}, "cores must be at least 1"),
        ({"cores": 2, "jobs": 0}, "jobs must be at least 1"),
        ({"cores": 2, "override": 0}, "--threads must be a positive integer"),
        ({"cores": 2, "override": 1.5}, "--threads must be a positive integer"),
        ({"cores": 2, "quota": 0.0}, "quota must be positive"),
        ({"cores": 2, "cpus_per_run": 0}, "--cpus-per-run must be positive"),
    ],
)
def test_bad_inputs_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decide_threads(**kwargs)


def test_run_options_check_threads_and_the_hang_timeout():
    with pytest.raises(ExecutionError, match="--threads must be a positive integer"):
        RunOptions(threads=0)
    with pytest.raises(ExecutionError, match="hang_timeout_s must be positive"):
        RunOptions(hang_timeout_s=0)


# -- the cgroup quota, on a fake /sys/fs/cgroup ---------------------------------------------


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_in_cpus(tmp_path):
    write(tmp_path / "cg" / "cpu.max", "150000 100000\n")
    write(tmp_path / "self", "0::/\n")
    assert cgroup_quota(tmp_path / "cg", tmp_path / "self") == 1.5
    write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path / "cg", tmp_path / "self") is None


def test_cgroup_v2_smallest_quota_along_the_path_binds(tmp_path):
    write(tmp_path / "cg" / "user.slice" / "cpu.max", "200000 100000\n")
    write(tmp_path / "cg" / "user.slice" / "job" / "cpu.max", "max 100000\n")
    write(tmp_path / "self", "0::/user.slice/job\n")
    assert cgroup_quota(tmp_path / "cg", tmp_path / "self") == 2.0


def test_cgroup_v1_quota_in_cpus(tmp_path):
    cpu = tmp_path / "cg" / "cpu,cpuacct"
    write(cpu / "docker" / "abc" / "cpu.cfs_quota_us", "50000\n")
    write(cpu / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    write(cpu / "cpu.cfs_quota_us", "-1\n")
    write(cpu / "cpu.cfs_period_us", "100000\n")
    write(tmp_path / "self", "4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n0::/\n")
    assert cgroup_quota(tmp_path / "cg", tmp_path / "self") == 0.5
    write(tmp_path / "self", "4:cpu,cpuacct:/\n")  # a container's own namespace: its cgroup is the mount
    assert cgroup_quota(tmp_path / "cg", tmp_path / "self") is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cgroup_quota(tmp_path / "nothing", tmp_path / "missing") is None
    write(tmp_path / "cg" / "cpu.max", "garbage")
    write(tmp_path / "self", "0::/\n")
    assert cgroup_quota(tmp_path / "cg", tmp_path / "self") is None


# -- applying it -------------------------------------------------------------------------------


APPLY = """
import json, os, sys
import torch
from gmbench.execution.threads import apply_policy, current_policy

before = current_policy()
first = apply_policy(**json.loads(sys.argv[1]))
torch.ones(64, 64) @ torch.ones(64, 64)
second = apply_policy(**json.loads(sys.argv[2]))  # a second run in the same process
print(json.dumps({"before": before, "first": first, "second": second, "current": current_policy(),
                  "torch": [torch.get_num_threads(), torch.get_num_interop_threads()],
                  "env": [os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS")]}))
"""


def apply_in_fresh_process(first: dict, second: dict, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GMBENCH_THREADS_POLICY")}
    out = subprocess.run([sys.executable, "-c", APPLY, json.dumps(first), json.dumps(second)], capture_output=True, text=True,
                         cwd=REPO, env={**environ, "PYTHONPATH": str(REPO), **env}, check=True)
    return json.loads(out.stdout)


def test_policy_sets_torch_and_the_children_environment():
    got = apply_in_fresh_process({"jobs": 1}, {"override": 1})
    expected = decide_threads(affinity_cores(), cgroup_quota(), jobs=1)
    assert got["before"]["source"] == "torch defaults"
    assert got["first"] == expected
    # the inter-op pool keeps the size it was given; intra-op follows each run
    assert got["second"] == got["current"] == {"intra_op": 1, "inter_op": 1, "source": "--threads"}
    assert got["torch"] == [1, 1] and got["env"] == ["1", "1"]


def test_policy_off_keeps_torch_defaults_unless_threads_is_given():
    got = apply_in_fresh_process({"jobs": 4}, {"jobs": 4}, GMBENCH_THREADS_POLICY="off")
    assert got["first"] == got["second"] == got["before"] and got["first"]["source"] == "torch defaults"
    assert got["env"] == [None, None]
    got = apply_in_fresh_process({"override": 1}, {"override": 1}, GMBENCH_THREADS_POLICY="off")
    assert got["first"]["intra_op"] == 1 and got["first"]["source"] == "--threads"


def test_bad_policy_setting_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("GMBENCH_THREADS_POLICY", "sometimes")
    with pytest.raises(ExecutionError, match=r"GMBENCH_THREADS_POLICY='sometimes': use 'off'"):
        make_executor("local").run([], None, tmp_path)


# -- every executor applies it -------------------------------------------------------------------


@pytest.fixture
def keep_torch_threads():
    n = torch.get_num_threads()
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    yield
    torch.set_num_threads(n)
    for k, v in env.items():  # apply_threads exports them for child processes: put them back
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def threads_of(record: dict) -> int:
    assert record["status"] == "ok", record["error"]
    prov = record["provenance"]
    if "threads" in prov:  # provenance.threads (gmbench.execution.threads.current_policy)
        assert prov["threads"]["intra_op"] == prov["cpu_threads"]
    return prov["cpu_threads"]


def test_in_process_and_worker_runs_use_their_share(tmp_path, keep_torch_threads, monkeypatch):
    monkeypatch.setenv("GMBENCH_THREADS_POLICY", "on")  # conftest switches it off under xdist
    from gmbench.records import RunSpec
    from tests.test_faults import options, registries

    spec = RunSpec("healthy", "8gaussians", "faults", 0)
    share = {jobs: decide_threads(affinity_cores(), cgroup_quota(), jobs=jobs)["intra_op"] for jobs in (1, 2)}
    [rec] = make_executor("local", options=options(threads=None)).run([spec], registries(), tmp_path / "inproc")
    assert threads_of(rec) == share[1] == torch.get_num_threads()
    [rec] = make_executor("local", jobs=2, options=options(threads=None)).run([spec], registries(), tmp_path / "jobs2")
    assert threads_of(rec) == share[2]
    [rec] = make_executor("local", jobs=2, options=options(threads=3)).run([spec], registries(), tmp_path / "threads3")
    assert threads_of(rec) == 3


def test_cli_passes_threads_on(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import gmbench.execution as execution
    from gmbench.cli import main

    from tests.test_faults import registries

    calls = []

    def spy(name, **kw):
        calls.append(kw["options"])
        raise ExecutionError("stopped by the test")

    monkeypatch.setattr("gmbench.plugins.Registries", registries)
    monkeypatch.setattr(execution, "make_executor", spy)
    base = ["run", "--plugins", "healthy", "--datasets", "8gaussians", "--budget", "faults", "--out", str(tmp_path)]
    res = CliRunner().invoke(main, [*base, "--threads", "3"])
    assert "stopped by the test" in res.output and calls[-1].threads == 3
    res = CliRunner().invoke(main, base)
    assert calls[-1].threads is None
    res = CliRunner().invoke(main, [*base, "--threads", "0"])
    assert res.exit_code == 2 and "--threads" in res.output and len(calls) == 2
