"""Executor overheads: in-process vs worker processes (--jobs) vs Ray, on one small suite.

Runs the same matrix with each executor and reports the wall time, the
overhead per run against in-process, the speed-up of ``--jobs 2``, and
whether every executor produced the very same metric values. One-off
start-up costs (the forkserver importing torch, ``ray.init``, Ray workers)
are measured separately from the per-run numbers: each executor does an
untimed warm-up run first.

    python benchmarks/bench_executors.py                    # fake methods, CPU
    python benchmarks/bench_executors.py --suite real --budget smoke
    python benchmarks/bench_executors.py --device cuda --suite real --budget smoke

With ``--device cuda`` it also runs the suite in bf16 and twice with and
without ``--deterministic``, and reports which metric values were
bit-identical across repeats (see docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the fake methods live in tests/plugins


def bench_budget():
    from gmbench.budget import Budget

    return Budget(
        name="bench-executors",
        train_flops={"toy2d": 1.5e6, "image": 4e6, "text": 4e6},
        batch_size={"toy2d": 64, "image": 32, "text": 16},
        wall_clock_s=120,
        model_size="tiny",
        eval_samples={"toy2d": 1000, "image": 128, "text": 16},
        nfe_grid=(1,),
        eval_timeout_s=120,
    )


class BenchPlugin:
    """The fake GaussianFit method and the bench budget."""

    from gmbench import hookimpl

    @hookimpl
    def gmbench_register_methods(self, register):
        from tests.plugins.fake_methods import GaussianFit

        register(GaussianFit)

    @hookimpl
    def gmbench_register_budgets(self, register):
        register(bench_budget())


def values(records) -> dict:
    return {r["spec_hash"]: sorted((e["name"], str(e["sampler"]), str(e["nfe"]), e["value"]) for e in r["metrics"])
            for r in records}


def timed(executor, specs, reg, label, warm_specs=()) -> tuple[float, list[dict]]:
    from gmbench.runner import Matrix, run_all

    with tempfile.TemporaryDirectory() as warm_dir:
        if warm_specs:
            t0 = time.perf_counter()
            executor.run(list(warm_specs), reg, warm_dir)
            print(f"  {label}: warm-up {time.perf_counter() - t0:.1f}s", flush=True)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        records = run_all(Matrix(specs, []), reg, out, executor=executor)
        wall = time.perf_counter() - t0
    failed = [r for r in records if r["status"] != "ok"]
    print(f"  {label}: {wall:.2f}s for {len(specs)} runs" + (f" ({len(failed)} FAILED: {failed[0]['error']})" if failed else ""), flush=True)
    return wall, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=["fake", "real"], default="fake", help="fake GaussianFit runs, or the installed plugins")
    ap.add_argument("--budget", default=None, help="budget (default: a bench budget for fake, smoke for real)")
    ap.add_argument("--datasets", default="8gaussians,moons,spirals,rings")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the numbers here")
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    import torch

    from gmbench.execution import RunOptions, make_executor
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.runner import expand

    if args.suite == "fake":
        # by reference to an importable module: workers and Ray tasks unpickle it
        from benchmarks.bench_executors import BenchPlugin as Importable

        extra, budget, plugins, load_ep = (Importable(),), args.budget or "bench-executors", "gaussfit", False
    else:
        extra, budget, plugins, load_ep = (), args.budget or "smoke", "all", True
    reg = Registries(make_plugin_manager(extra, load_entrypoints=load_ep))
    specs = expand(reg, plugins=plugins, datasets=args.datasets, budget=budget, seeds=range(args.seeds), device=args.device).specs
    warm = [replace(specs[0], seed=10_000 + i) for i in range(2)]
    n = len(specs)
    opts = RunOptions(threads=1, extra_plugins=extra, load_entrypoints=load_ep)
    cpu_info = (f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}, "
                f"{torch.get_num_threads()} torch threads in-process")
    print(f"{n} runs ({plugins} x {args.datasets} x {args.seeds} seeds, budget {budget}) on {args.device}; {cpu_info}")
    if args.device.startswith("cuda"):
        print(f"  GPU: {torch.cuda.get_device_name(0)}")

    out: dict = {"load_average_at_start": os.getloadavg()[0], "runs": n, "device": args.device, "suite": args.suite, "budget": budget, "cpus": os.cpu_count()}
    t_in, rec_in = timed(make_executor("local", options=opts), specs, reg, "in-process", warm)
    t0 = time.perf_counter()
    first_worker = make_executor("local", jobs=1, options=opts)
    first_worker.run([replace(specs[0], seed=20_000)], reg, tempfile.mkdtemp())
    out["worker_first_start_s"] = time.perf_counter() - t0
    print(f"  forkserver start + first worker run: {out['worker_first_start_s']:.1f}s")
    t_j1, rec_j1 = timed(make_executor("local", jobs=1, options=opts), specs, reg, "--jobs 1", warm)
    t_j2, rec_j2 = timed(make_executor("local", jobs=2, options=opts), specs, reg, "--jobs 2", warm)
    out.update(in_process_s=t_in, jobs1_s=t_j1, jobs2_s=t_j2,
               worker_overhead_per_run_s=(t_j1 - t_in) / n, jobs2_speedup=t_in / t_j2)
    same = values(rec_in) == values(rec_j1) == values(rec_j2)

    if not args.no_ray:
        try:
            import ray
        except ImportError:
            print("  ray: not installed, skipped")
        else:
            gpus = 1 if args.device.startswith("cuda") else 0
            t0 = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
            out["ray_init_s"] = time.perf_counter() - t0
            print(f"  ray.init: {out['ray_init_s']:.1f}s")
            seq = make_executor("ray", options=opts, cpus_per_run=os.cpu_count(), gpus_per_run=gpus)  # one run at a time
            t_rs, rec_rs = timed(seq, specs, reg, "ray, one run at a time", warm)
            par = make_executor("ray", options=opts, cpus_per_run=1, gpus_per_run=gpus)
            t_rp, rec_rp = timed(par, specs, reg, "ray, one run per CPU", warm)
            ray.shutdown()
            out.update(ray_sequential_s=t_rs, ray_parallel_s=t_rp, ray_overhead_per_run_s=(t_rs - t_in) / n,
                       ray_parallel_speedup=t_in / t_rp)
            same = same and values(rec_in) == values(rec_rs) == values(rec_rp)
    out["identical_metrics_across_executors"] = same

    if args.device.startswith("cuda"):
        out.update(gpu_checks(specs, reg, opts))

    print()
    print(f"per-run worker overhead vs in-process: {out['worker_overhead_per_run_s'] * 1000:.0f} ms")
    print(f"--jobs 2 speed-up over in-process:     {out['jobs2_speedup']:.2f}x")
    if "ray_overhead_per_run_s" in out:
        print(f"per-run Ray overhead vs in-process:    {out['ray_overhead_per_run_s'] * 1000:.0f} ms (one run at a time)")
        print(f"Ray, one run per CPU, speed-up:        {out['ray_parallel_speedup']:.2f}x")
    print(f"identical metrics across executors:    {same}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))


def gpu_checks(specs, reg, opts) -> dict:
    """bf16 time, and bit-identity of repeated runs with and without --deterministic."""
    from gmbench.execution import make_executor

    out = {}
    bf16 = [replace(s, precision="bf16") for s in specs]
    t_bf, rec_bf = timed(make_executor("local", jobs=1, options=opts), bf16, reg, "cuda bf16 (--jobs 1)")
    out["cuda_bf16_s"] = t_bf
    out["cuda_bf16_ok"] = all(r["status"] == "ok" for r in rec_bf)
    for det in (False, True):
        o = replace(opts, deterministic=det)
        _, a = timed(make_executor("local", jobs=1, options=o), specs, reg, f"cuda repeat A deterministic={det}")
        _, b = timed(make_executor("local", jobs=1, options=o), specs, reg, f"cuda repeat B deterministic={det}")
        va, vb = values(a), values(b)
        same = sum(va[k] == vb[k] for k in va)
        out[f"cuda_bit_identical_runs_deterministic_{det}"] = f"{same}/{len(va)}"
        print(f"  deterministic={det}: {same}/{len(va)} runs bit-identical across repeats")
    return out


if __name__ == "__main__":
    main()
