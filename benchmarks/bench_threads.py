"""The thread policy on a busy machine: one ddpm smoke run, idle and loaded, before and after.

Times ``gmbench run --plugins ddpm --datasets 8gaussians --budget smoke`` (a fresh
``python -m gmbench`` process each time, wall clock of the whole command) in
three settings:

* ``before``: ``GMBENCH_THREADS_POLICY=off`` and no ``OMP_NUM_THREADS``: torch's
  own default threads (one per CPU of the affinity mask), as before the policy;
* ``after``: the policy (the CPUs this process may use / runs in flight);
* ``--threads 1``: the explicit override, for reference;

each on the idle machine and with ``--load N`` CPU-bound background processes
(``yes > /dev/null``), which this script starts before and kills after each
loaded run. Every run has a time limit (``--timeout``), so the load never
outlives the script by more than that.

    python benchmarks/bench_threads.py                 # 8 background processes
    python benchmarks/bench_threads.py --load 8 --json out.json

Wall-clock caps are raised (``GMBENCH_CAP_SCALE``, ``--cap-scale``, default 10)
so that a slow run finishes and shows its full time instead of stopping at the
cap; the record's status is printed too. See docs/scaling.md for the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "gmbench", "run", "--plugins", "ddpm", "--datasets", "8gaussians", "--budget", "smoke"]
SETTINGS = {
    "before (torch defaults)": ({"GMBENCH_THREADS_POLICY": "off"}, []),
    "after (policy)": ({}, []),
    "--threads 1": ({}, ["--threads", "1"]),
}


def start_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def one_run(env_extra: dict, args_extra: list, cap_scale: float, timeout_s: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GMBENCH_THREADS_POLICY")}
    env.update(env_extra, GMBENCH_CAP_SCALE=str(cap_scale), PYTHONPATH=str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as out:
        t0 = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, *COMMAND, "--out", out, *args_extra], env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"wall_s": time.monotonic() - t0, "status": f"killed after {timeout_s:g}s"}
        wall = time.monotonic() - t0
        records = [json.loads(p.read_text()) for p in Path(out).glob("*.json")]
    if proc.returncode != 0 or len(records) != 1:
        return {"wall_s": wall, "status": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    rec = records[0]
    prov = rec.get("provenance", {})
    threads = prov.get("threads") or {"intra_op": prov.get("cpu_threads")}
    return {"wall_s": wall, "status": rec["status"], "train_s": (rec.get("train") or {}).get("seconds"),
            "threads": threads.get("intra_op"), "source": threads.get("source", "?")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--load", type=int, default=8, help="CPU-bound background processes in the loaded runs")
    ap.add_argument("--cap-scale", type=float, default=10.0, help="GMBENCH_CAP_SCALE for the runs")
    ap.add_argument("--timeout", type=float, default=600.0, help="limit per run (s); the run is killed past it")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{platform.node()}: {cores} CPUs in the affinity mask, load average {os.getloadavg()[0]:.2f} at start, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    rows = []
    for loaded in (False, True):
        for name, (env_extra, args_extra) in SETTINGS.items():
            load = start_load(args.load) if loaded else []
            try:
                res = one_run(env_extra, args_extra, args.cap_scale, args.timeout)
            finally:
                stop_load(load)
            res.update(setting=name, machine=f"{args.load} x yes" if loaded else "idle", loadavg=os.getloadavg()[0])
            rows.append(res)
            print(f"  {res['machine']:>8}  {name:<24} {res['wall_s']:7.1f} s wall  "
                  f"train {res.get('train_s') or float('nan'):6.1f} s  threads {res.get('threads')} ({res.get('source')})  "
                  f"{res['status']}  (load avg after {res['loadavg']:.1f})", flush=True)

    print()
    print("| machine | setting | threads | wall (s) | training (s) | status |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        train = f"{r['train_s']:.1f}" if r.get("train_s") is not None else "—"
        print(f"| {r['machine']} | {r['setting']} | {r.get('threads')} ({r.get('source')}) | {r['wall_s']:.1f} | {train} | {r['status']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
