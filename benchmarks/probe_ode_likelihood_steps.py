"""Probe: is the probability-flow likelihood of ``score-sde`` on digits converged at the default
8 RK4 steps? Trains ``score-sde`` (and ``flow-matching`` beside it) at the ``smoke`` budget,
seed 0, and scores the test split's uniformly dequantised bits/dim (the host's
``HeldOutLikelihood``, Hutchinson trace) at several ``likelihood_steps``. A discrete
likelihood in bits/dim of the bins cannot be negative in expectation (Jensen: the dequantised
log-density is at most log P(bin)), so a negative value is integration error. An
investigation aid for docs/claims_small.md, not a test.

    OMP_NUM_THREADS=1 python benchmarks/probe_ode_likelihood_steps.py [STEPS ...]
"""
import sys

import torch

from gmbench.budget import SMOKE
from gmbench.data.digits import Digits
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.training import train
from gmbench_methods.diffusion.score_sde import ScoreSDE
from gmbench_methods.flow_matching.flow_matching import FlowMatching

steps = [int(s) for s in sys.argv[1:]] or [8, 32, 128]
data = Digits()
for cls in (ScoreSDE, FlowMatching):
    torch.manual_seed(0)
    m = cls(data.spec(), model_size=SMOKE.model_size)
    train(m, data.split("train").x, SMOKE, "image", torch.Generator().manual_seed(0))
    m.train(False)
    for k in steps:
        m.likelihood_steps = k
        bpd = HeldOutLikelihood().score_model(m, EvalContext(dataset=data, n_samples=0, seed=0))["test_bpd"]
        print(f"{cls.name}: likelihood_steps {k}: test bits/dim {bpd:.3f}", flush=True)
