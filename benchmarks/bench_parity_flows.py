"""Parity of gmbench's flows (``glow``, ``realnvp``) with a public flow library, zuko, at equal
counted training FLOPs: exact test NLL on 8gaussians against the true density.

For each seed and each FLOP budget:

(a) gmbench's ``glow`` (1807.03039) and ``realnvp`` (1605.08803) at the ``small`` preset,
    trained through gmbench's own loop (``gmbench.training.train``: its meter, data order and
    optimizer) with the toy2d allowance set to the budget; ``realnvp[coupling=spline]`` is
    gmbench's own rational-quadratic spline coupling (1906.04032), the kind of flow zuko's NSF is;
(a') the same with every coupling network swapped for zuko's kind (two hidden layers of
    64, ReLU; ``glow[plain=64]``, ``realnvp[plain=64;coupling=spline]``): the flow code against
    zuko's on equal conditioners, apart from the shared backbone's cost;
(b) zuko's ``NSF`` (neural spline flow, arXiv 1906.04032: monotonic rational-quadratic
    splines, autoregressive conditioners, which in 2-D are couplings) and zuko's ``RealNVP``
    (affine coupling), each with 3 transforms of two hidden layers of 64 (zuko's defaults),
    trained with Adam at lr 1e-3 on the same batches (256, drawn from a CPU generator seeded
    with the seed) for as many steps as fit the budget. A step's cost is counted with
    ``gmbench.flops.count_cost``, the currency the host charges gmbench's methods (matrix
    products by torch's formulas plus one per element for every other op, forward, backward
    and the Adam update), so both sides pay the same price for the same work. zuko's flows
    see the data standardised by the training split's mean and std (a fixed affine map whose
    log-determinant is added back): its splines live on ``[-5, 5]`` and the data reach radius
    ~5.5, and gmbench's flows normalise by themselves (actnorm's data-dependent
    initialisation, batch norm).

zuko side's budgets are read off one long run: it is evaluated each time its counted FLOPs
pass a budget (its learning rate is constant, so a run stopped there would be the same run).

Score: exact test NLL (nats) of the 5,000 test points, against the true density's own NLL
on the same points (``EightGaussians.log_prob``; the gap is what a method loses to the truth,
free of the test split's sampling noise) and the closed-form entropy
``log 8 + 1 + log(2 pi 0.25) = 3.531`` (the mixture's components are 6 sigma apart: the
overlap changes it by far less than 1e-3).

    OMP_NUM_THREADS=1 python benchmarks/bench_parity_flows.py [--seeds 3] [--flops 1e11,3e11,1e12]

zuko is a benchmark-only dependency (``pip install zuko``, 1.6.0 here). Results, machine and
what they showed: ``docs/parity_flows.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import replace

import torch

from gmbench.budget import SMALL
from gmbench.data.toy2d import EightGaussians
from gmbench.flops import count_cost
from gmbench.training import train

ENTROPY = math.log(8) + 1 + math.log(2 * math.pi * 0.25)
BATCH = 256


def test_nll(log_prob, x: torch.Tensor) -> float:
    with torch.no_grad():
        return -float(torch.cat([log_prob(c) for c in x.split(1000)]).double().mean())


# ------------------------------------------------------------------------- (a) gmbench


def run_gmbench(name: str, seed: int, flops: float, data: EightGaussians, kwargs: dict) -> dict:
    from gmbench_methods.flows.glow import Glow
    from gmbench_methods.flows.realnvp import RealNVP

    cls = {"glow": Glow, "realnvp": RealNVP}[name]
    kwargs = dict(kwargs)
    plain = kwargs.pop("plain", None)
    # no wall-clock cap: FLOPs are the rule here, and a loaded machine must not cut a run short
    budget = replace(SMALL, train_flops={**SMALL.train_flops, "toy2d": flops}, wall_clock_s=1e7)
    torch.manual_seed(seed)  # network initialisation, as the runner does
    method = cls(data.spec(), model_size=budget.model_size, **kwargs)
    if plain:
        swap_conditioners(method, int(plain))
    t0 = time.perf_counter()
    (report,) = train(method, data.split("train").x, budget, "toy2d", torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - t0
    nll = test_nll(lambda c: method.log_likelihood(c, None), data.split("test").x)
    if report.stopped:
        raise RuntimeError(f"{name} stopped early: {report.stopped}")
    return {"steps": report.steps, "flops": report.flops, "seconds": seconds, "nll": nll,
            "params": method.num_parameters()}


def swap_conditioners(method, width: int) -> None:
    """Replace every coupling network by zuko's default kind (``Linear, ReLU, Linear, ReLU,
    Linear`` of ``width``), last layer zeroed as gmbench's: the ``[plain=64]`` rows compare
    the flow code with zuko's on the same size of conditioner, apart from the shared backbone."""
    from torch import nn

    from gmbench_methods.flows.layers import ChannelCoupling, MaskedCoupling, MaskedSplineCoupling

    for m in method.flow.modules():
        if isinstance(m, (ChannelCoupling, MaskedCoupling, MaskedSplineCoupling)):
            d_in, d_out = m.net.inp.in_features, m.net.out.out_features
            net = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                nn.Linear(width, d_out))
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
            m.net = net


# ------------------------------------------------------------------------- (b) zuko


def zuko_flow(kind: str):
    import zuko

    if kind == "zuko-nsf":
        return zuko.flows.NSF(2, transforms=3, hidden_features=(64, 64))
    return zuko.flows.RealNVP(2, transforms=3, hidden_features=(64, 64))


def run_zuko(kind: str, seed: int, budgets: list[float], data: EightGaussians) -> dict[float, dict]:
    train_x, test_x = data.split("train").x, data.split("test").x
    mean, std = train_x.mean(0), train_x.std(0)
    log_jac = -float(torch.log(std).sum())  # log |det| of x -> (x - mean) / std

    torch.manual_seed(seed)
    flow = zuko_flow(kind)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)

    def log_prob(x):
        return flow().log_prob((x - mean) / std) + log_jac

    def step(x):
        loss = -log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    out, spent, steps, t0 = {}, 0.0, 0, time.perf_counter()
    pending = sorted(budgets)
    while pending:
        idx = torch.randint(0, train_x.shape[0], (BATCH,), generator=generator)
        if steps < 3 or steps % 50 == 0:  # re-count now and then: the cost is constant
            _, mode = count_cost(step, train_x[idx])
            cost = mode.total
        else:
            step(train_x[idx])
        spent += cost
        steps += 1
        while pending and spent + cost > pending[0]:  # the next step would pass this budget
            out[pending.pop(0)] = {"steps": steps, "flops": spent, "seconds": time.perf_counter() - t0,
                                   "nll": test_nll(log_prob, test_x),
                                   "params": sum(p.numel() for p in flow.parameters())}
    return out


# ------------------------------------------------------------------------- main


def parse_value(text: str):
    """A constructor argument from the command line: JSON (``64``, ``"exp"``), else the bare
    word as a string (``coupling=spline``), as ``gmbench run``'s method labels write it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--flops", default="1e11,3e11,1e12", help="comma-separated training budgets")
    parser.add_argument("--methods", default="zuko-nsf,zuko-realnvp,glow,realnvp,glow[plain=64],realnvp[plain=64]",
                        help="zuko-nsf, zuko-realnvp, or a gmbench flow with constructor arguments "
                             "name[key=value;...] (values JSON, or a bare word as a string: "
                             "realnvp[plain=64;coupling=spline]); plain=W swaps its conditioners for zuko's kind of MLP")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()
    budgets = [float(f) for f in args.flops.split(",")]
    methods = args.methods.split(",")
    data = EightGaussians()
    truth = -float(data.log_prob(data.split("test").x).double().mean())
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {torch.get_num_threads()}")
    try:
        import zuko

        print(f"zuko {zuko.__version__}")
    except ImportError:
        zuko = None
    print(f"true density's NLL on the test points: {truth:.4f}; entropy {ENTROPY:.4f}")
    results: dict = {m: {b: [] for b in budgets} for m in methods}
    for seed in range(args.seeds):
        for m in methods:
            if m.startswith("zuko"):
                for b, r in run_zuko(m, seed, budgets, data).items():
                    results[m][b].append(r)
                    print(json.dumps({"method": m, "seed": seed, "budget": b, **r}), flush=True)
            else:
                name, _, extra = m.partition("[")
                kwargs = {k: parse_value(v) for k, v in (kv.split("=") for kv in extra.rstrip("]").split(";") if kv)}
                for b in budgets:
                    r = run_gmbench(name, seed, b, data, kwargs)
                    results[m][b].append(r)
                    print(json.dumps({"method": m, "seed": seed, "budget": b, **r}), flush=True)
    print()
    print("| method | budget (FLOPs) | steps | params | test NLL, median [min-max] | gap to truth | gap to entropy |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        for b in budgets:
            rs = results[m][b]
            if not rs:
                continue
            nll = [r["nll"] for r in rs]
            med = statistics.median(nll)
            print(f"| {m} | {b:.0e} | {statistics.median(r['steps'] for r in rs):.0f} | {rs[0]['params'] / 1e3:.0f}k "
                  f"| {med:.3f} [{min(nll):.3f}-{max(nll):.3f}] | {med - truth:+.3f} | {med - ENTROPY:+.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"truth": truth, "entropy": ENTROPY, "results": {m: {str(b): v for b, v in r.items()}
                                                                         for m, r in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
