"""Cost of gmbench's metrics (not a timed test; run it by hand and report the numbers).

1. ``fid``: FID + KID + precision/recall (+ IS, same feature pass) of 2,000
   generated vs 2,000 reference 8x8 digits images through
   :class:`gmbench.metrics.images.ImageFidelity` (torch-fidelity, gmbench-cnn
   features). "cold" extracts and caches the reference statistics, "warm"
   reuses them (the normal case: every run after the first on a dataset).
   Target: under 5 s on a 2-core CPU. The digits set has 1,797 images, so both
   sets are drawn with replacement from it and jittered by half a grey level.
2. ``share``: full runs (train, sample, score) at a budget, reporting the share
   of the run's wall time spent in metric computation (sum of the metric
   groups' ``seconds``) and in the whole evaluation (sampling included).
   Target: metrics under 20% of the run at budget ``small``. The reference
   language model of ``gen_ppl`` is trained on the first text run and cached
   for later ones; both cases are shown when text runs are included.

    OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py fid
    OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py share --runs ddpm:8gaussians,ddpm:digits,mdlm:synthlang
    OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py share --fake   # a fast fake method, no plugins needed
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def bench_fid(repeats: int, device: str = "cpu") -> None:
    from gmbench.data.digits import Digits
    from gmbench.metrics.base import EvalContext
    from gmbench.metrics.images import ImageFidelity

    base = Digits()
    pool = torch.cat([base.split("train").x, base.split("test").x])
    g = torch.Generator().manual_seed(0)

    def draw(n):
        x = pool[torch.randint(0, len(pool), (n,), generator=g)]
        return (x + (torch.rand(x.shape, generator=g) - 0.5) / 16).clamp(-1, 1)

    reference = draw(2000)

    class Digits2000(Digits):  # same name, so the committed digits extractor applies
        def _load(self, split):
            from gmbench.data.base import Split

            return Split(reference if split == "train" else reference[:10])

    generated = draw(2000)
    ds = Digits2000()
    metric = ImageFidelity()
    import torch_fidelity  # noqa: F401 - import time (seconds, once per process) is not metric time

    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as cache:
        ctx = EvalContext(dataset=ds, n_samples=2000, seed=0, cache_dir=cache, device=dev)
        t0 = time.perf_counter()
        out = metric.score_samples(generated, ctx)
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(repeats):
            ctx = EvalContext(dataset=ds, n_samples=2000, seed=0, cache_dir=cache, device=dev)
            t0 = time.perf_counter()
            metric.score_samples(generated, ctx)
            warm.append(time.perf_counter() - t0)
        if dev.type == "cuda":  # the same numbers as on the CPU, up to float rounding
            cpu = metric.score_samples(generated, EvalContext(dataset=ds, n_samples=2000, seed=0, cache_dir=cache + "/cpu"))
            print("  cpu values:  " + ", ".join(f"{k}={v:.6g}" for k, v in cpu.items()))
            print("  cuda values: " + ", ".join(f"{k}={v:.6g}" for k, v in out.items()))
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"FID+KID+PRC+IS, 2000 vs 2000 digits, torch {torch.__version__}, {where}")
    print(f"  cold (reference features extracted and cached): {cold:.2f} s")
    print(f"  warm (cached reference), median of {repeats}: {statistics.median(warm):.2f} s  (all: {', '.join(f'{w:.2f}' for w in warm)})")
    print("  values: " + ", ".join(f"{k}={v:.4g}" for k, v in out.items()))


def _fake_plugin():
    from torch import nn

    from gmbench import hookimpl
    from gmbench.backbones import MLP
    from gmbench.method import Method, OptimizerSpec, SamplerInfo, Stage

    class FastDenoiser(Method):
        """An MLP denoiser at the budget's size, trained under its FLOPs; samples one
        noisy denoising pass per NFE (cost grows with NFE like a real sampler)."""

        name, family, paper = "fast-fake", "bench", "0000.00000"
        modalities = ("toy2d", "image")
        samplers = (SamplerInfo("euler"),)

        def __init__(self, data, model_size="small"):
            super().__init__(data, model_size)
            self.net = MLP(data.dims, data.dims, size=model_size)
            self.scale = nn.Parameter(torch.ones(()))

        def modules(self):
            return {"net": self.net, "scale": nn.ParameterList([self.scale])}

        def stages(self):
            return [Stage("main", (OptimizerSpec("adam", ("net",), lr=1e-3),))]

        def training_step(self, stage, batch, step):
            x = batch.flatten(1)
            t = torch.rand(x.shape[0], device=x.device)
            noise = torch.randn_like(x)
            xt = (1 - t[:, None]) * x + t[:, None] * noise
            return {"adam": (self.net(xt, t) - (noise - x)).pow(2).mean()}

        def sample(self, n, sampler, nfe, generator):
            x = torch.randn(n, self.data.dims, generator=generator, device=self.device)
            for i in range(nfe, 0, -1):
                t = torch.full((n,), i / nfe, device=self.device)
                x = x - self.net(x, t) / nfe
            out = x.reshape(n, *self.data.shape)
            return out.clamp(-1, 1) if self.data.modality == "image" else out

    class Plugin:
        @hookimpl
        def gmbench_register_methods(self, register):
            register(FastDenoiser)

    return Plugin()


def _uncapped(budget_name: str):
    """A copy of a budget with its clock caps lifted (a loaded shared CPU overruns them)."""
    from dataclasses import replace

    from gmbench import hookimpl
    from gmbench.budget import LARGE, SMALL, SMOKE, STANDARD

    base = {b.name: b for b in (SMOKE, SMALL, STANDARD, LARGE)}[budget_name]
    copy = replace(base, name=f"{budget_name}-nocap", wall_clock_s=1e6, eval_timeout_s=1e6)

    class Plugin:
        @hookimpl
        def gmbench_register_budgets(self, register):
            register(copy)

    return copy.name, Plugin()


def bench_share(runs: list[tuple[str, str]], budget: str, fake: bool, device: str = "cpu", no_cap: bool = False) -> None:
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.records import RunSpec
    from gmbench.runner import run_one

    extra = (_fake_plugin(),) if fake else ()
    if no_cap:
        budget, plugin = _uncapped(budget)
        extra += (plugin,)
    reg = Registries(make_plugin_manager(extra_plugins=extra, load_entrypoints=not fake))
    print(f"budget {budget}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'run':24s} {'wall s':>7s} {'train':>7s} {'sampling':>8s} {'metrics':>8s} {'metric%':>7s} {'test-NLL':>8s} {'NLL%':>6s}  slowest sample metric")
    with tempfile.TemporaryDirectory() as tmp:
        for method, dataset in runs:
            t0 = time.perf_counter()
            rec = run_one(RunSpec(method, dataset, budget, 0, device), reg, f"{tmp}/out", cache_dir=f"{tmp}/cache")
            wall = time.perf_counter() - t0
            label = f"{method} on {dataset}"
            if rec["status"] != "ok":
                print(f"{label:24s} FAILED: {rec['error']}")
                continue
            if device != "cpu":
                c = rec["cost"]
                print(f"  {label}: peak {c['peak_memory']}, sampling " + "; ".join(
                    f"{s['sampler']}@{s['nfe']}: {s['samples_per_s']:.0f}/s, latency {1e3 * s['latency_s']:.1f} ms, "
                    f"cuda peak {s.get('cuda_peak_mb', 0):.0f} MB" for s in c["sampling"]))
            groups: dict = {}
            for e in rec["metrics"]:  # one time per metric group and setting
                groups[(e["metric"], e.get("sampler"), e.get("nfe"))] = e.get("seconds") or 0.0
            per_metric: dict = {}
            for (name, sampler, _), sec in groups.items():
                if sampler is not None:
                    per_metric[name] = per_metric.get(name, 0.0) + sec
            # model metrics (test likelihood) time the method's own log_likelihood: shown apart
            nll_s = sum(sec for (_, sampler, _), sec in groups.items() if sampler is None)
            metric_s = sum(per_metric.values())
            sampling_s = sum(c["seconds"] + c["latency_s"] for c in rec["cost"]["sampling"])
            slowest = max(per_metric.items(), key=lambda kv: kv[1]) if per_metric else ("-", 0.0)
            train_s = rec["train"]["seconds"] if rec.get("train") else 0.0
            print(f"{label:24s} {wall:7.1f} {train_s:7.1f} {sampling_s:8.1f} {metric_s:8.1f} {100 * metric_s / wall:6.1f}% "
                  f"{nll_s:8.1f} {100 * nll_s / wall:5.1f}%  {slowest[0]} {slowest[1]:.1f}s")
    print("metrics = sample metrics (FID & co., SWD/MMD/modes, text metrics incl. the reference LM); "
          "test-NLL = the likelihood metric, i.e. the method's log_likelihood on the test split; "
          "sampling = timed sampling calls (warm-up excluded)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fid")
    f.add_argument("--repeats", type=int, default=3)
    f.add_argument("--device", default="cpu")
    s = sub.add_parser("share")
    s.add_argument("--runs", default="ddpm:8gaussians,ddpm:digits,mdlm:synthlang,mdlm:synthlang",
                   help="method:dataset pairs; a repeated text pair shows the cached reference model")
    s.add_argument("--budget", default="small")
    s.add_argument("--fake", action="store_true", help="use a fast fake method instead of the installed plugins")
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-cap", action="store_true", help="lift the budget's clock caps (same FLOPs, sample counts, grid)")
    args = ap.parse_args()
    if args.what == "fid":
        bench_fid(args.repeats, args.device)
    else:
        runs = [tuple(r.split(":", 1)) for r in args.runs.split(",")]
        if args.fake:
            runs = [("fast-fake", d) for _, d in runs if d != "synthlang"] or [("fast-fake", "8gaussians")]
        bench_share(runs, args.budget, args.fake, args.device, args.no_cap)


if __name__ == "__main__":
    main()
