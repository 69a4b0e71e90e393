"""Probe: why is iDDPM's bound on digits worse than DDPM's at `small`? Trains ``iddpm`` (seed 0)
on `small`'s image FLOPs and evaluates its variational bound on the test split three ways: with
its learned variance (the record's number), with ``v`` forced to 0 (``beta~_t``, the posterior
variance DDPM's bound uses) and to 1 (``beta_t``); then splits the bound's terms ``L_{t-1}`` by
the noise level ``sqrt(1 - abar_t)`` against half a quantisation bin of the data (every ``t``
below it, every 40th above, 128 test images). Bits/dim of the model's input scale (no dequantisation offset: the
board's figure is about 3.1 higher; compare the rows with each other). An investigation aid
for docs/claims_small.md, not a test.

    OMP_NUM_THREADS=1 python benchmarks/probe_iddpm_bound.py [N_TEST]
"""
import math
import sys

import torch

from gmbench.budget import SMALL
from gmbench.data.digits import Digits
from gmbench.training import train
from gmbench_methods.diffusion.iddpm import IDDPM

data = Digits()
tr, te = data.split("train").x, data.split("test").x
te = te[: int(sys.argv[1])] if len(sys.argv) > 1 else te
D = tr[0].numel()


def bpd(m) -> float:
    with torch.no_grad():
        ll = m.log_likelihood(te, torch.Generator().manual_seed(0))
    return float(-ll.mean() / D / math.log(2))


torch.manual_seed(0)
m = IDDPM(data.spec(), model_size="small")
reports = train(m, tr, SMALL, "image", torch.Generator().manual_seed(0))
m.train(False)
print(f"trained {sum(r.steps for r in reports)} steps", flush=True)
learned = m.model_output
with torch.no_grad():
    x = te[:256].to(m.device)
    for t in (1, 10, 100, 1000, 3000):
        tt = torch.full((len(x),), t, dtype=torch.long)
        _, v = learned(m.denoiser(), m.schedule.q_sample(x, tt, torch.randn_like(x)), tt)
        print(f"learned v at t = {t}: mean {float(v.mean()):.3f}, sd {float(v.std()):.3f}", flush=True)
print(f"bound, learned v: {bpd(m):.3f} bits/dim", flush=True)
for forced in (0.0, 1.0):
    def output(net, xt, t, forced=forced):
        eps, v = learned(net, xt, t)
        return eps, torch.full_like(v, forced)
    m.model_output = output
    print(f"bound, v = {forced:g} ({'beta~' if forced == 0 else 'beta'}): {bpd(m):.3f} bits/dim", flush=True)

m.model_output = learned
net, ab = m.denoiser(), m.schedule.abar
lo, hi = data.spec().value_range
half_bin = (hi - lo) / (data.spec().levels - 1) / 2
x = te[:128].to(m.device)
g = torch.Generator().manual_seed(1)
stride, below, above, n_below = 40, 0.0, 0.0, 0
with torch.no_grad():
    l0 = float(m._bound_terms(net, x, torch.ones(len(x), dtype=torch.long), g).mean())
    for t in range(2, m.T + 1):
        sigma = float((1 - ab[t]).sqrt())
        n_below += sigma < half_bin
        if sigma >= half_bin and (t - 2) % stride:  # every t where the terms are steep, every 40th above
            continue
        weight = 1 if sigma < half_bin else stride
        term = float(m._bound_terms(net, x, torch.full((len(x),), t, dtype=torch.long), g).mean()) * weight
        if sigma < half_bin:
            below += term
        else:
            above += term
to_bits = 1 / D / math.log(2)
print(f"L_0 {l0 * to_bits:.3f}; sum of L_(t-1) where the noise is below half a bin ({half_bin:g}; "
      f"{n_below} of {m.T} steps) {below * to_bits:.3f}, above it {above * to_bits:.3f} bits/dim", flush=True)
