"""Host overhead per training step versus a bare torch loop on the same model.

The host's loop (gmbench.training.train) adds: FLOP metering (every op counted
on the first steps of a stage, on seeded random audits and on the last steps;
every step once a cost changes), a NaN check, budget and clock checks, and the
optimizer plumbing. This script trains the same MLP on the same data with the
same batch size for about the same number of steps both ways and reports the
per-step times (median of several repeats, interleaved so that background load
hits both alike). Target: overhead under 3%.

``--varying`` uses a method whose cost changes every step (the batch alternates
between two sizes), which the meter must count on every step: the price of
exact counting. Threads are set explicitly (``--threads``, default 1), and the
default run is long enough to include the audits.

    python benchmarks/bench_host_overhead.py [--steps 2000] [--repeats 5] [--size small] [--threads 1] [--varying]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from gmbench.backbones import MLP
from gmbench.budget import SMALL, count_flops
from gmbench.data.toy2d import EightGaussians
from gmbench.method import Method, OptimizerSpec, SamplerInfo, Stage
from gmbench.training import train


class Regression(Method):
    """Denoising-style regression: the DDPM training step without the schedule."""

    name, family, paper = "bench", "bench", "0000.00000"
    modalities = ("toy2d",)
    samplers = (SamplerInfo("none", adjustable_nfe=False),)

    def __init__(self, data, model_size="small"):
        super().__init__(data, model_size)
        self.net = MLP(2, 2, size=model_size)

    def modules(self):
        return {"net": self.net}

    def stages(self):
        return [Stage("main", (OptimizerSpec("adam", ("net",), lr=1e-3),))]

    varying = False

    def training_step(self, stage, batch, step):
        if self.varying:
            batch = batch[: len(batch) - step % 2]
        t = torch.rand(batch.shape[0])
        noise = torch.randn_like(batch)
        return {"adam": (self.net(batch + noise, t) - noise).pow(2).mean()}

    def sample(self, n, sampler, nfe, generator):
        raise NotImplementedError


def bare_loop(data, steps, batch_size, size, seed, varying=False):
    torch.manual_seed(seed)
    net = MLP(2, 2, size=size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        batch = data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]
        if varying:
            batch = batch[: len(batch) - step % 2]
        t = torch.rand(batch.shape[0])
        noise = torch.randn_like(batch)
        loss = (net(batch + noise, t) - noise).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())  # the host reads the loss for its NaN check: keep the work equal
    return (time.perf_counter() - t0) / steps


def host_loop(data, steps, batch_size, size, seed, varying=False):
    ds = EightGaussians()
    # measure the steady cost of a whole step (forward, backward, optimizer update) on a
    # throwaway copy, then give a budget of about `steps` steps
    probe = replace(SMALL, train_flops={"toy2d": 1e18}, batch_size={"toy2d": batch_size})
    torch.manual_seed(seed)
    m = Regression(ds.spec(), size)
    m.varying = varying
    opt = torch.optim.Adam(m.net.parameters(), lr=1e-3)

    def one_step(step):
        opt.zero_grad(set_to_none=True)
        m.training_step("main", data[:batch_size], step)["adam"].backward()
        opt.step()

    one_step(0)  # allocates Adam's state
    per_step = (count_flops(one_step, 1)[1] + count_flops(one_step, 2)[1]) / 2
    budget = replace(probe, train_flops={"toy2d": per_step * steps})
    torch.manual_seed(seed)
    m = Regression(ds.spec(), size)
    m.varying = varying
    t0 = time.perf_counter()
    (report,) = train(m, data, budget, "toy2d", torch.Generator().manual_seed(seed))
    elapsed = time.perf_counter() - t0
    assert abs(report.steps - steps) <= 2 + steps // 100, (report.steps, steps)
    return elapsed / report.steps, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--size", default="small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--varying", action="store_true", help="a method whose cost changes every step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = EightGaussians().split("train").x
    bare, host = [], []
    for r in range(args.repeats):
        bare.append(bare_loop(data, args.steps, args.batch_size, args.size, r, args.varying))
        per_step, report = host_loop(data, args.steps, args.batch_size, args.size, r, args.varying)
        host.append(per_step)
    b, h = statistics.median(bare), statistics.median(host)
    print(f"threads={torch.get_num_threads()} size={args.size} batch={args.batch_size} steps={args.steps} "
          f"repeats={args.repeats} varying={args.varying}")
    print(f"meter: {report.flops_method}")
    print(f"bare torch loop: {b * 1e3:.3f} ms/step (runs: {', '.join(f'{x * 1e3:.3f}' for x in bare)})")
    print(f"gmbench host   : {h * 1e3:.3f} ms/step (runs: {', '.join(f'{x * 1e3:.3f}' for x in host)})")
    print(f"overhead: {100 * (h - b) / b:+.2f}%")


if __name__ == "__main__":
    main()
