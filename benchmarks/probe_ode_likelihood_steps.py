"""Probe: does the probability-flow likelihood of ``score-sde`` on digits converge, and at what
cost? Trains ``score-sde`` (and ``flow-matching`` beside it) at a budget (default ``smoke``),
seed 0, on digits (or 8gaussians), and scores the test split with the host's
``HeldOutLikelihood`` (digits: uniformly dequantised bits/dim, Hutchinson trace; 8gaussians:
nats, exact trace) with each likelihood solver given: an integer is that
many fixed RK4 steps, ``adaptive:TOL`` is dopri5 at ``rtol = atol = TOL``. Prints the value,
the network calls per example batch and the seconds. A discrete likelihood in bits/dim of the
bins cannot be negative in expectation (Jensen: the dequantised log-density is at most
log P(bin)), so a negative value is integration error. An investigation aid for
docs/claims_small.md and docs/methods/score-sde.md, not a test.

    OMP_NUM_THREADS=1 python benchmarks/probe_ode_likelihood_steps.py [--budget small] [--dataset 8gaussians]
        [--methods score-sde] [SOLVER ...]
"""
import argparse
import time

import torch

from gmbench.budget import LARGE, SMALL, SMOKE, STANDARD
from gmbench.data.digits import Digits
from gmbench.data.toy2d import EightGaussians
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.training import train
from gmbench_methods.diffusion.score_sde import ScoreSDE
from gmbench_methods.flow_matching.flow_matching import FlowMatching

BUDGETS = {b.name: b for b in (SMOKE, SMALL, STANDARD, LARGE)}
METHODS = {"score-sde": ScoreSDE, "flow-matching": FlowMatching}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("solvers", nargs="*", default=["8", "32", "128"])
parser.add_argument("--budget", default="smoke", choices=sorted(BUDGETS))
parser.add_argument("--methods", default="score-sde,flow-matching")
parser.add_argument("--dataset", default="digits", choices=["digits", "8gaussians"])
args = parser.parse_args()
budget = BUDGETS[args.budget]
data = Digits() if args.dataset == "digits" else EightGaussians()
modality = data.spec().modality
for name in args.methods.split(","):
    cls = METHODS[name]
    torch.manual_seed(0)
    m = cls(data.spec(), model_size=budget.model_size)
    train(m, data.split("train").x, budget, modality, torch.Generator().manual_seed(0))
    m.train(False)
    net = m.denoiser() if hasattr(m, "denoiser") else m.net
    calls = [0]
    net.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    for solver in args.solvers:
        if solver.startswith("adaptive:"):
            m.likelihood_steps = "adaptive"
            m.likelihood_rtol = m.likelihood_atol = float(solver.split(":")[1])
        else:
            m.likelihood_steps = int(solver)
        calls[0], start = 0, time.perf_counter()
        scores = HeldOutLikelihood().score_model(m, EvalContext(dataset=data, n_samples=0, seed=0))
        value = f"test bits/dim {scores['test_bpd']:.4f}" if "test_bpd" in scores else f"test nll {scores['test_nll']:.4f} nats"
        print(f"{name} ({args.budget}, {args.dataset}): likelihood {solver}: {value}, "
              f"{calls[0]} network calls, {time.perf_counter() - start:.0f} s", flush=True)
