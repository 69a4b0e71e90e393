"""Probe: do the flows overfit digits at `small`? Trains glow or realnvp (seed 0) at 1/4 and all of
`small`'s image FLOPs and prints the mean log-likelihood of 500 training images and of the test
split, in bits per dimension of the model's own input scale (no dequantisation offset: only the
train-test gap is meant to be read). An investigation aid for docs/claims_small.md, not a test.

    OMP_NUM_THREADS=1 python benchmarks/probe_flow_overfit.py glow|realnvp
"""
import dataclasses, math, sys, torch
from gmbench.budget import SMALL
from gmbench.data.digits import Digits
from gmbench.training import train
from gmbench_methods.flows.glow import Glow
from gmbench_methods.flows.realnvp import RealNVP

data = Digits()
tr, te = data.split("train").x, data.split("test").x
D = tr[0].numel()
def bits(m, x):
    """Mean negative log-likelihood, bits per dimension of the model's input scale."""
    with torch.no_grad():
        ll = torch.cat([m.log_likelihood(c, torch.Generator().manual_seed(0)) for c in x.split(256)])
    return float(-ll.mean() / D / math.log(2))
if len(sys.argv) != 2 or sys.argv[1] not in ("glow", "realnvp"):
    sys.exit("usage: probe_flow_overfit.py glow|realnvp")
cls = {"glow": Glow, "realnvp": RealNVP}[sys.argv[1]]
for frac in (0.25, 1.0):
    torch.manual_seed(0)
    b = dataclasses.replace(SMALL, train_flops={**SMALL.train_flops, "image": SMALL.train_flops["image"] * frac}, wall_clock_s=1e5)
    m = cls(data.spec(), model_size="small")
    train(m, tr, b, "image", torch.Generator().manual_seed(0))
    m.train(False)
    a, t = bits(m, tr[:500]), bits(m, te)
    print(f"{sys.argv[1]} frac {frac}: train {a:.3f} test {t:.3f} gap {t-a:.3f} (log-likelihood of the model's input scale, bits/dim)", flush=True)
