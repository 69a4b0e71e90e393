"""Parity of gmbench's flow-matching with torchcfm at equal counted training FLOPs.

Trains, on 8gaussians, for each seed and each coupling:

(a) gmbench's ``flow-matching`` (2210.02747; ``coupling="independent"``, I-CFM-like, and
    ``coupling="minibatch_ot"``, OT-CFM, 2302.00482) through gmbench's own training loop
    (``gmbench.training.train``: its FLOP meter, data order and optimizer);
(b) the *same* network (``ode.build_velocity_net``: the shared toy2d MLP at the budget's
    preset, output layer zeroed, initialised after the same ``torch.manual_seed``) trained
    by torchcfm's ``ConditionalFlowMatcher`` (I-CFM) or
    ``ExactOptimalTransportConditionalFlowMatcher`` (OT-CFM) for as many steps as fit the
    same allowance, each step's cost counted with ``gmbench.flops.count_cost`` (the host's
    own counter: matrix products, element operations, forward, backward, clipping and the
    Adam update, as the host meters a step). A step's cost is the same every step (the same
    ops on the same shapes; torchcfm's OT plan runs in numpy, which no counter sees, as
    gmbench's scipy assignment), so the first 3 steps are counted, must agree, and a
    counted audit every 50 steps must agree again.

Same recipe on both sides: batch 256, Adam at gmbench's toy2d lr 3e-3, gradient-norm
clipping at 1, squared error averaged over dimensions, the same batches (a CPU generator
seeded with the seed), t ~ U[0, 1]. Differences that remain are the implementations':
torchcfm's I-CFM path ``x_t = t x1 + (1 - t) x0 + sigma eps`` with ``sigma = --sigma``
(default 0, torchcfm's default) against gmbench's ``(1 - (1 - 1e-4) t) x0 + t x1``; and
torchcfm's exact-OT coupling *samples* 256 pairs from the plan with replacement
(``OTPlanSampler.sample_plan``, numpy's global RNG, seeded here) where gmbench uses the
optimal permutation itself (every pair once); ``--torchcfm-ot-replace false`` makes torchcfm draw
its pairs without replacement, i.e. every pair of that permutation once, to isolate the difference.

Sampling: ``euler`` at NFE 10, 20, 50, 100 and ``dopri5``. The gmbench rows use
``FlowMatching.sample`` (dopri5 at rtol = atol = 1e-5, gmbench's setting); the torchcfm rows
use torchdyn's ``NeuralODE`` as torchcfm's examples do (``solver="euler"`` on
``linspace(0, 1, NFE + 1)``; ``solver="dopri5"`` at atol = rtol = 1e-4, the examples'
setting); "cross" runs gmbench's Euler sampler on the torchcfm-trained network (next to the
torchcfm column: the sampler code alone; next to the gmbench column: training alone).

Scores: gmbench's sliced W2 (``gmbench.metrics.distances.sliced_wasserstein``, 256
projections, the toy2d metric) of 2,000 samples against the test split, median over seeds
[min-max], a paired t-test of gmbench against torchcfm across seeds (the claims' test), and the
NFE dopri5 used.

    OMP_NUM_THREADS=1 python benchmarks/bench_parity_flow_matching.py [--seeds 5] [--flops 1e12]

torchcfm is a benchmark-only dependency (``pip install torchcfm``; it brings POT and
torchdyn, and downloads nothing at run time). Results: ``docs/parity_flow_matching.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

from gmbench.budget import SMALL
from gmbench.data.toy2d import EightGaussians
from gmbench.flops import count_cost
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.metrics.toy2d import SWD_PROJECTIONS
from gmbench.stats import paired_compare
from gmbench.training import train
from gmbench_methods.flow_matching import ode
from gmbench_methods.flow_matching.flow_matching import FlowMatching

NFES = (10, 20, 50, 100)


def settings(nfes) -> list:
    return [("euler", n) for n in nfes] + [("dopri5", None)]
COUPLINGS = {"I-CFM": "independent", "OT-CFM": "minibatch_ot"}
N_SAMPLES = 2000
AUDIT_EVERY = 50
SETTINGS = settings(NFES)


# ------------------------------------------------------------------------- (a) gmbench


def train_gmbench(seed: int, train_x: torch.Tensor, flops: float, coupling: str, lr: float):
    budget = replace(SMALL, train_flops={**SMALL.train_flops, "toy2d": flops})
    torch.manual_seed(seed)  # as the runner: network initialisation
    method = FlowMatching(EightGaussians().spec(), model_size=budget.model_size, coupling=coupling, lr=lr)
    t0 = time.perf_counter()
    (report,) = train(method, train_x, budget, "toy2d", torch.Generator().manual_seed(seed))
    info = {"steps": report.steps, "flops": report.flops, "seconds": time.perf_counter() - t0,
            "params": method.num_parameters(), "meter": report.flops_method}
    return method, info


# ------------------------------------------------------------------------ (b) torchcfm


def train_torchcfm(seed: int, train_x: torch.Tensor, flops: float, coupling: str, lr: float, sigma: float,
                   batch: int, model_size: str, ot_replace: bool = True):
    from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                    ExactOptimalTransportConditionalFlowMatcher)

    torch.manual_seed(seed)
    np.random.seed(seed)  # torchcfm's OT plan sampler draws pairs with numpy's global RNG
    net = ode.build_velocity_net(EightGaussians().spec(), model_size)  # the same network and init as (a)
    matcher = (ExactOptimalTransportConditionalFlowMatcher if coupling == "minibatch_ot" else ConditionalFlowMatcher)(sigma=sigma)
    if coupling == "minibatch_ot" and not ot_replace:
        # --torchcfm-ot-replace false: draw the batch's pairs from the exact plan *without*
        # replacement; the plan of two equal-size batches is a permutation (1/n on n cells), so
        # every pair once, as gmbench trains (isolates torchcfm's resampling from the rest)
        plan_sampler = matcher.ot_sampler
        sample_plan = plan_sampler.sample_plan
        plan_sampler.sample_plan = lambda x0, x1, replace=True: sample_plan(x0, x1, replace=False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)  # data order, as the host draws it

    def step(x1: torch.Tensor) -> None:
        x0 = torch.randn_like(x1)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        loss = (net(xt, t) - ut).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    costs, total, steps = [], 0.0, 0
    t0 = time.perf_counter()
    while True:
        per_step = max(costs[-3:]) if costs else 0.0
        if steps and total + per_step > flops:
            break
        idx = torch.randint(0, train_x.shape[0], (batch,), generator=generator)
        if steps < 4 or steps % AUDIT_EVERY == 0:  # the first steps (Adam allocates its state at step 0) and audits
            _, mode = count_cost(step, train_x[idx])
            costs.append(mode.total)
            if steps >= 4 and mode.total != costs[3]:
                raise RuntimeError(f"torchcfm step {steps} cost {mode.total:.6g}, not the constant {costs[3]:.6g}")
            total += mode.total
        else:
            step(train_x[idx])
            total += costs[-1]
        steps += 1
    net.eval()
    info = {"steps": steps, "flops": total, "seconds": time.perf_counter() - t0,
            "params": sum(p.numel() for p in net.parameters()), "meter": f"counted {len(costs)} of {steps} steps"}
    return net, info


class TimeFirst(nn.Module):
    """torchdyn calls ``field(t, x)``; gmbench's MLP is ``net(x, t)``. Counts calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, t, x, *args, **kwargs):
        self.calls += 1
        return self.net(x, torch.as_tensor(t).reshape(()))  # torchdyn hands t as shape (1,)


@torch.no_grad()
def sample_torchcfm(net: nn.Module, sampler: str, nfe: int | None, seed: int) -> tuple[torch.Tensor, int]:
    from torchdyn.core import NeuralODE

    field = TimeFirst(net)
    x0 = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(10_000 * seed + (nfe or 0)))
    if sampler == "euler":
        node = NeuralODE(field, solver="euler", sensitivity="adjoint")
        span = torch.linspace(0, 1, nfe + 1)
    else:
        node = NeuralODE(field, solver="dopri5", sensitivity="adjoint", atol=1e-4, rtol=1e-4)
        span = torch.linspace(0, 1, 2)
    traj = node.trajectory(x0, t_span=span)
    return traj[-1], field.calls


@torch.no_grad()
def sample_gmbench(method: FlowMatching, sampler: str, nfe: int | None, seed: int) -> tuple[torch.Tensor, int]:
    calls = [0]
    handle = method.net.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        x = method.sample(N_SAMPLES, sampler, nfe or 1, torch.Generator().manual_seed(10_000 * seed + (nfe or 0)))
    finally:
        handle.remove()
    return x, calls[0]


def sample_cross(net_b: nn.Module, sampler: str, nfe: int | None, seed: int, lr: float) -> tuple[torch.Tensor, int]:
    method = FlowMatching(EightGaussians().spec(), model_size="tiny", lr=lr)
    method.net = net_b
    return sample_gmbench(method, sampler, nfe, seed)


# --------------------------------------------------------------------------- reporting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--flops", type=float, default=SMALL.train_flops["toy2d"], help="training FLOPs per run")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam lr for both (gmbench's toy2d default)")
    ap.add_argument("--sigma", type=float, default=0.0, help="torchcfm's sigma (its default 0)")
    ap.add_argument("--couplings", default="I-CFM,OT-CFM")
    ap.add_argument("--torchcfm-ot-replace", choices=("true", "false"), default="true",
                    help="torchcfm's OT-CFM draws its pairs from the plan with replacement (its default, true); "
                         "false draws them without, every pair of the permutation once, as gmbench")
    ap.add_argument("--nfes", default=",".join(map(str, NFES)), help="Euler NFEs to sample at")
    args = ap.parse_args()
    global SETTINGS
    SETTINGS = settings(int(n) for n in args.nfes.split(","))
    import torchcfm

    ds = EightGaussians()
    train_x, test_x = ds.split("train").x, ds.split("test").x
    batch, size = SMALL.batch_size["toy2d"], SMALL.model_size
    couplings = [c.strip() for c in args.couplings.split(",")]
    impls = ("gmbench", "torchcfm", "cross")
    swd = {(c, i, s, n): [] for c in couplings for i in impls for s, n in SETTINGS}
    nfe_used = {k: [] for k in swd}
    infos = {(c, i): [] for c in couplings for i in impls[:2]}
    t_all = time.perf_counter()
    for seed in range(args.seeds):
        for c in couplings:
            coupling = COUPLINGS[c]
            method, info_a = train_gmbench(seed, train_x, args.flops, coupling, args.lr)
            net_b, info_b = train_torchcfm(seed, train_x, args.flops, coupling, args.lr, args.sigma, batch, size,
                                           ot_replace=args.torchcfm_ot_replace == "true")
            infos[(c, "gmbench")].append(info_a)
            infos[(c, "torchcfm")].append(info_b)
            for impl, fn in (("gmbench", lambda s, n: sample_gmbench(method, s, n, seed)),
                             ("torchcfm", lambda s, n: sample_torchcfm(net_b, s, n, seed)),
                             ("cross", lambda s, n: sample_cross(net_b, s, n, seed, args.lr))):
                for sampler, nfe in SETTINGS:
                    if impl == "cross" and sampler == "dopri5":
                        continue  # the sampler code is compared on the fixed-step grid (saves the longest solve)
                    x, calls = fn(sampler, nfe)
                    key = (c, impl, sampler, nfe)
                    x = x.float()
                    ok = bool(torch.isfinite(x).all())
                    swd[key].append(sliced_wasserstein(x, test_x, n_projections=SWD_PROJECTIONS, seed=seed)
                                    if ok else float("inf"))
                    nfe_used[key].append(calls)
            print(f"seed {seed} {c}: gmbench {info_a['steps']} steps {info_a['flops']:.4g} FLOPs {info_a['seconds']:.0f}s; "
                  f"torchcfm {info_b['steps']} steps {info_b['flops']:.4g} FLOPs {info_b['seconds']:.0f}s; "
                  f"euler-10 swd {swd[(c, 'gmbench', 'euler', 10)][-1]:.3f} / {swd[(c, 'torchcfm', 'euler', 10)][-1]:.3f}",
                  flush=True)
        report(args, torchcfm.__version__, couplings, impls, infos, swd, nfe_used, seed + 1, time.perf_counter() - t_all)


def report(args, version, couplings, impls, infos, swd, nfe_used, seeds_done: int, seconds: float) -> None:
    print()
    print(f"torch {torch.__version__}, torchcfm {version}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, seeds {seeds_done} of {args.seeds}, FLOPs {args.flops:.3g}, "
          f"lr {args.lr}, torchcfm sigma {args.sigma}, torchcfm OT pairs drawn with replacement "
          f"{args.torchcfm_ot_replace}, {seconds:.0f}s so far")
    for c in couplings:
        for impl in impls[:2]:
            rows = infos[(c, impl)]
            flops = ", ".join("%.4g" % r["flops"] for r in rows)
            print(f"{c} {impl}: {rows[0]['params']} parameters, steps {[r['steps'] for r in rows]}, counted FLOPs "
                  f"[{flops}], train seconds {[round(r['seconds']) for r in rows]} ({rows[0]['meter']})")
    print()
    print("SW2: median over seeds [min-max]; ratio: gmbench / torchcfm medians; cross: gmbench's sampler on the "
          "torchcfm-trained net (fixed-step samplers only); dopri5's NFE: median network calls for the 2,000 samples, gmbench/torchcfm")
    print()
    print("p: paired t-test across seeds of gmbench against torchcfm (gmbench.stats.paired_compare, the claims' "
          "test; 'tie' unless one side is better beyond seed noise at 95%)")
    print()
    print("| coupling | sampler | NFE | gmbench | torchcfm | ratio | p (paired) | cross |")
    print("|---|---|---|---|---|---|---|---|")

    def cell(key):
        v = swd[key]
        return f"{statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]" if v else "-"

    for c in couplings:
        for sampler, nfe in SETTINGS:
            k = {i: (c, i, sampler, nfe) for i in impls}
            ratio = statistics.median(swd[k["gmbench"]]) / statistics.median(swd[k["torchcfm"]])
            shown = nfe if nfe is not None else "/".join(f"{statistics.median(nfe_used[k[i]]):.0f}" for i in impls[:2])
            test = paired_compare(dict(enumerate(swd[k["gmbench"]])), dict(enumerate(swd[k["torchcfm"]])), "lower",
                                  names=("gmbench", "torchcfm"))
            verdict = "tie" if test.better is None else ("gmbench" if test.better == "a" else "torchcfm") + " better"
            p = "-" if test.p_value is None else f"{test.p_value:.2f} ({verdict})"
            print(f"| {c} | {sampler} | {shown} | {cell(k['gmbench'])} | {cell(k['torchcfm'])} | {ratio:.2f} | {p} | {cell(k['cross'])} |")
    print(flush=True)


if __name__ == "__main__":
    main()
