"""Probe: a consistency model's two-step samples on 8gaussians against the second time tau_1.

The `twostep` sampler re-noises the one-step sample to tau_1 and maps it back once more. gmbench
takes the Karras midpoint (3.30 on toy2d; for CD the nearest time of its training grid, 2.59)
unless `tau1` is set; the paper searches the times per
model, one at a time by ternary search on FID (CM, arXiv 2303.01469, Sec. 6). This probe trains
`consistency` (`--mode ct|cd`) at a budget and seed, then scores 5,000 two-step samples per tau_1
against the **validation** split with sliced W2 (the toys' primary metric; never the test split):
a fixed grid, and with `--search` a 13-point log-spaced grid over (eps, T) and a ternary search
over ln tau_1 between the best grid point's neighbours, the same noise for every candidate
(common random numbers) so that the objective is a smooth function of tau_1. The search
reports the best of every point it scored, then scores that choice, the midpoint and one step
again on fresh noise, since a choice scored on its own draws is optimistic. It
prints the value to pass as `--set consistency.tau1=...`. An investigation and tuning aid for
docs/claims_small.md and docs/methods/consistency.md, not a test.

    OMP_NUM_THREADS=1 python benchmarks/probe_cm_two_step.py [--mode cd] [--budget small] [--seed 0] [--search]
"""
import argparse
import math

import torch

from gmbench.budget import LARGE, SMALL, SMOKE, STANDARD
from gmbench.data.toy2d import EightGaussians
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.training import train
from gmbench_methods.diffusion.consistency import ConsistencyModel

BUDGETS = {b.name: b for b in (SMOKE, SMALL, STANDARD, LARGE)}
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--mode", default="cd", choices=["ct", "cd"])
parser.add_argument("--budget", default="small", choices=sorted(BUDGETS))
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--search", action="store_true", help="ternary search of tau_1 on the validation split")
parser.add_argument("--iterations", type=int, default=8, help="ternary-search iterations (2 candidates each)")
parser.add_argument("-n", type=int, default=5000, help="samples per candidate (the validation split has 5,000)")
args = parser.parse_args()

data = EightGaussians()
ref = data.split("val").x
torch.manual_seed(args.seed)
m = ConsistencyModel(data.spec(), model_size=BUDGETS[args.budget].model_size, mode=args.mode)
train(m, data.split("train").x, BUDGETS[args.budget], "toy2d", torch.Generator().manual_seed(args.seed))
m.train(False)
net = m.sampling_net()
# common random numbers: the same prior draw and re-noising draw for every tau_1
g = torch.Generator().manual_seed(1)
z0, z1 = torch.randn(args.n, 2, generator=g), torch.randn(args.n, 2, generator=g)
with torch.no_grad():
    one_step = m.consistency_fn(net, m.T * z0, torch.full((args.n,), m.T))


scored: dict[float, float] = {}  # every tau_1 evaluated: the search reports the best of them all


def score(tau: float | None) -> float:
    if tau is None:
        return sliced_wasserstein(one_step, ref)
    with torch.no_grad():
        x = one_step + math.sqrt(tau**2 - m.eps**2) * z1
        scored[tau] = sliced_wasserstein(m.consistency_fn(net, x, torch.full((args.n,), tau)), ref)
        return scored[tau]


midpoint = m.sample_times(2)[1]  # CT: the Karras midpoint; CD: that point snapped to its training grid
print(f"consistency[mode={args.mode}] at {args.budget}, seed {args.seed}: eps {m.eps:g}, T {m.T:g}, "
      f"the sampler's tau_1 {midpoint:.3f}")
print(f"one step: swd vs val {score(None):.3f}")
for tau in (0.2, 0.5, 1.0, 2.0, midpoint):
    print(f"two steps, tau_1 {tau:7.3f}: swd vs val {score(tau):.3f}", flush=True)
if args.search:
    # sliced W2 of a few thousand samples is noisy (about +-0.01), so a bare ternary search can settle in a
    # side dip: a log-spaced grid first, then ternary search between the best point's neighbours
    grid = torch.linspace(math.log(m.eps * 1.01), math.log(m.T * 0.99), 13).tolist()
    values = [score(math.exp(u)) for u in grid]
    i = min(range(len(grid)), key=values.__getitem__)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    for _ in range(args.iterations):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if score(math.exp(a)) <= score(math.exp(b)):
            hi = b
        else:
            lo = a
    score(math.exp((lo + hi) / 2))
    if args.mode == "cd":
        # CD trains f only at the N = cd_steps times of its Karras grid (the released code's
        # multistep sampler takes indices into that grid), so score each of them too
        train_times = [t for t in m.discretisation(m.cd_steps).tolist() if m.eps < t < m.T]
        print("CD's training times:", ", ".join(f"{t:.3g}: {score(t):.3f}" for t in train_times))
    # the best of every point scored (fixed list, grid, search), not the last interval's midpoint
    best = min(scored, key=scored.__getitem__)
    print("grid:", ", ".join(f"{math.exp(u):.3g}: {v:.3f}" for u, v in zip(grid, values)))
    print(f"search (fixed list, 13-point grid, then {args.iterations} ternary iterations, {len(scored)} points): "
          f"best tau_1 {best:.3f}, swd vs val {scored[best]:.3f} -> --set consistency.tau1={best:.3g}")
    # chosen on these noise draws, so its score above is optimistic: score the choice, the midpoint
    # and one step again on fresh noise (seeds 2..4) against the same split
    for label, tau in (("one step", None), ("sampler's tau_1", midpoint), ("searched", best)):
        fresh = []
        for seed in (2, 3, 4):
            g = torch.Generator().manual_seed(seed)
            a, b = torch.randn(args.n, 2, generator=g), torch.randn(args.n, 2, generator=g)
            with torch.no_grad():
                x = m.consistency_fn(net, m.T * a, torch.full((args.n,), m.T))
                if tau is not None:
                    x = m.consistency_fn(net, x + math.sqrt(tau**2 - m.eps**2) * b, torch.full((args.n,), tau))
            fresh.append(sliced_wasserstein(x, ref))
        print(f"fresh noise (seeds 2-4), {label}: swd vs val " + " / ".join(f"{v:.3f}" for v in fresh))
