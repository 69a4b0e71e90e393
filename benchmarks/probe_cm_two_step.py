"""Probe: CD's two-step samples on 8gaussians against the second time tau_1 (the sampler uses the Karras
midpoint, 3.30). Retrains `consistency[mode=cd]` at `small`, seed 0, and scores 2,000 samples per tau_1
against the validation split (sliced W2). An investigation aid for docs/claims_small.md, not a test.

    OMP_NUM_THREADS=1 python benchmarks/probe_cm_two_step.py
"""
import math, torch
from gmbench.budget import SMALL
from gmbench.data.toy2d import EightGaussians
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.training import train
from gmbench_methods.diffusion.consistency import ConsistencyModel

data = EightGaussians()
ref = data.split("val").x
torch.manual_seed(0)
m = ConsistencyModel(data.spec(), model_size="small", mode="cd")
train(m, data.split("train").x, SMALL, "toy2d", torch.Generator().manual_seed(0))
m.train(False)
net = m.sampling_net()
def two_step(tau, n=2000, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = m.consistency_fn(net, m.T * torch.randn(n, 2, generator=g), torch.full((n,), m.T))
        if tau is None:
            return x
        x = x + math.sqrt(tau**2 - m.eps**2) * torch.randn(n, 2, generator=g)
        return m.consistency_fn(net, x, torch.full((n,), tau))
print("sample_times(2):", m.sample_times(2))
for tau in (None, 0.2, 0.5, 1.0, 2.0, 3.30):
    print("tau_1", tau, "swd vs val %.3f" % sliced_wasserstein(two_step(tau), ref), flush=True)
