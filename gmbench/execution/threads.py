"""How many torch threads a run uses: the host decides, for every executor.

Left to itself, torch starts one intra-op thread per CPU in the process's
affinity mask, whatever else runs: N runs at once then run N x cores threads,
and a container's CPU quota (cgroups) is not looked at at all. On a busy
machine oversubscribed OpenMP threads wait for each other at every parallel
region: a ddpm smoke run that took 9 s with one thread missed its 120 s cap
with the default (issue 8.1). So the host gives each run its share of the
CPUs this process may use:

* **CPUs available** = the affinity mask (``os.sched_getaffinity``), or the
  cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``)
  when that is smaller;
* **share of a run** = CPUs available / runs in flight (``--jobs N``), or
  ``--cpus-per-run`` under Ray (what Ray reserved for the task, capped by what
  the node's process may use);
* **intra-op threads** = the share rounded down, at least 1; ``--threads N``
  overrides it;
* **inter-op threads** = 1: runs execute eager PyTorch, where that pool only
  serves ``torch.jit.fork`` and TorchScript graphs, and each of its tasks runs
  intra-op work of its own (inter x intra threads at once).

:func:`decide_threads` is the rule (pure; tested with fake inputs),
:func:`apply_policy` reads this process's CPUs and applies the rule, and
:func:`current_policy` is what was last applied here, for the record's
provenance. ``GMBENCH_THREADS_POLICY=off`` leaves torch's defaults alone
unless ``--threads`` is given (the in-process behaviour before the policy;
for benchmarks).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

POLICY_ENV = "GMBENCH_THREADS_POLICY"
SOURCES = ("affinity", "cgroup quota", "--cpus-per-run", "--threads", "torch defaults")

#: what :func:`apply_policy` last applied in this process (None: nothing yet)
_CURRENT: dict | None = None


def decide_threads(
    cores: int,
    quota: float | None = None,
    jobs: int = 1,
    override: int | None = None,
    cpus_per_run: float | None = None,
) -> dict:
    """``{"intra_op", "inter_op", "source"}`` for one run.

    Args:
        cores: CPUs in this process's affinity mask.
        quota: the cgroup CPU quota in CPUs (1.5 = 150 ms per 100 ms), None if unlimited.
        jobs: runs executing at once on these CPUs (``--jobs``).
        override: ``--threads N``: exactly N intra-op threads.
        cpus_per_run: CPUs reserved for this run (Ray's ``--cpus-per-run``); replaces ``/ jobs``.
    """
    if cores < 1:
        raise ValueError(f"cores must be at least 1, got {cores}")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if override is not None:
        if int(override) != override or override < 1:
            raise ValueError(f"--threads must be a positive integer, got {override!r}")
        return {"intra_op": int(override), "inter_op": 1, "source": "--threads"}
    available, source = float(cores), "affinity"
    if quota is not None:
        if not quota > 0:
            raise ValueError(f"a CPU quota must be positive, got {quota!r}")
        if quota < cores:
            available, source = quota, "cgroup quota"
    if cpus_per_run is not None:
        if not cpus_per_run > 0:
            raise ValueError(f"--cpus-per-run must be positive, got {cpus_per_run!r}")
        if cpus_per_run < available:
            available, source = cpus_per_run, "--cpus-per-run"
        share = available
    else:
        share = available / jobs
    # 1e-9: 3 * (1/3) and the like must not round down to the integer below
    return {"intra_op": max(1, math.floor(share + 1e-9)), "inter_op": 1, "source": source}


def affinity_cores() -> int:
    """CPUs this process may run on (its affinity mask; all CPUs where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _quota_v2(text: str) -> float | None:
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _quota_v1(quota_text: str, period_text: str) -> float | None:
    quota = int(quota_text.strip())
    return None if quota <= 0 else quota / int(period_text.strip())


def _own_cgroup_dirs(mount: Path, relative: str) -> list[Path]:
    """The process's cgroup directory under ``mount`` and its ancestors up to ``mount``.

    A quota on any ancestor limits the process too. Inside a container with its
    own cgroup namespace the path is ``/`` and ``mount`` is its cgroup already;
    where the path is not visible under the mount, only the mount itself is read.
    """
    here = mount / relative.strip("/")
    if not here.is_dir():
        return [mount]
    dirs = [here]
    while dirs[-1] != mount and mount in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def cgroup_quota(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """This process's cgroup CPU quota in CPUs (the smallest along its cgroup path), None if unlimited.

    Reads cgroup v2 (``cpu.max``: ``"150000 100000"`` = 1.5 CPUs, ``"max ..."`` =
    unlimited) and v1 (``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; -1 =
    unlimited). Files that are missing or unreadable count as unlimited.
    """
    root = Path(root)
    v1_path = v2_path = "/"
    try:
        for line in Path(proc_cgroup).read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                v2_path = path
            elif "cpu" in controllers.split(","):
                v1_path = path
    except (OSError, ValueError):
        pass
    quotas = []
    for d in _own_cgroup_dirs(root, v2_path):
        try:
            quotas.append(_quota_v2((d / "cpu.max").read_text()))
        except (OSError, ValueError):
            pass
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        mount = root / name
        if not mount.is_dir():
            continue
        for d in _own_cgroup_dirs(mount, v1_path):
            try:
                quotas.append(_quota_v1((d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text()))
            except (OSError, ValueError):
                pass
        break
    found = [q for q in quotas if q is not None and q > 0]
    return min(found) if found else None


def policy_enabled() -> bool:
    value = os.environ.get(POLICY_ENV, "").strip().lower()
    if value in ("", "on", "1"):
        return True
    if value in ("off", "0"):
        return False
    raise ValueError(f"${POLICY_ENV}={value!r}: use 'off' (torch's default threads) or leave it unset")


def apply_threads(intra_op: int, inter_op: int, source: str) -> dict:
    """Set torch's thread pools (and OMP/MKL_NUM_THREADS for child processes); return what is in force.

    The inter-op pool can be sized only once per process, before it is first
    used: when that has happened (a second run in the same process, a plugin
    that used ``torch.jit.fork``), its size stays and the returned
    ``inter_op`` says what it is.
    """
    global _CURRENT
    import torch

    torch.set_num_threads(int(intra_op))
    if torch.get_num_interop_threads() != inter_op:
        try:
            torch.set_num_interop_threads(int(inter_op))
        except RuntimeError:  # already set or already used in this process: it keeps its size
            pass
    # children (a plugin's subprocess, a tokenizer pool) read these at start-up;
    # this process's OpenMP runtime is already sized by set_num_threads
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(int(intra_op))
    _CURRENT = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(), "source": source}
    return dict(_CURRENT)


def apply_policy(jobs: int = 1, override: int | None = None, cpus_per_run: float | None = None) -> dict:
    """Decide this run's threads from this process's CPUs and apply them; return :func:`current_policy`.

    Call before any torch work of the run (in the worker, or in the ``gmbench``
    process for in-process runs). With ``GMBENCH_THREADS_POLICY=off`` and no
    ``override`` nothing is set, and torch's defaults are recorded as such.
    """
    global _CURRENT
    if override is None and not policy_enabled():
        import torch

        _CURRENT = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(), "source": "torch defaults"}
        return dict(_CURRENT)
    decided = decide_threads(affinity_cores(), cgroup_quota(), jobs=jobs, override=override, cpus_per_run=cpus_per_run)
    return apply_threads(**decided)


def current_policy() -> dict:
    """``{"intra_op", "inter_op", "source"}`` last applied in this process.

    Before anything was applied (``run_one`` called directly, not through an
    executor) it is torch's current setting, as ``"torch defaults"``.
    """
    if _CURRENT is not None:
        return dict(_CURRENT)
    import torch

    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(), "source": "torch defaults"}
