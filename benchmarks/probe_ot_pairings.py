"""Batch-by-batch comparison of gmbench's minibatch-OT pairing with torchcfm's (parity finding).

docs/parity_flow_matching.md left open why gmbench's OT-CFM trails torchcfm's by 1.04-1.39x in
the medians of three seeds. This probe feeds the *same* (noise, data) batches to both couplers
and reports, per batch of 256 from the 8gaussians train split:

* the plans: gmbench's optimal permutation (``ode.minibatch_ot_pairing``, scipy
  ``linear_sum_assignment`` in float64) against torchcfm's exact plan (``OTPlanSampler(method=
  "exact").get_map``, POT's EMD): how many batches give the same permutation, the difference
  of their summed squared costs and how many pairs differ;
* what each trains on: the mean squared pair distance of gmbench's pairs against the 256 pairs
  torchcfm *samples* from its plan with replacement (``sample_plan``), and how many of those
  are distinct.

    OMP_NUM_THREADS=1 python benchmarks/probe_ot_pairings.py [--batches 40]

torchcfm is a benchmark-only dependency (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from gmbench.data.toy2d import EightGaussians
from gmbench_methods.flow_matching import ode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    from torchcfm.optimal_transport import OTPlanSampler

    data = EightGaussians().split("train").x
    sampler = OTPlanSampler(method="exact")
    gen = torch.Generator().manual_seed(0)
    np.random.seed(0)  # torchcfm samples its pairs with numpy's global RNG
    same, cost_gap, differ, d_gm, d_cfm, d_ind, distinct = 0, [], [], [], [], [], []
    for _ in range(args.batches):
        x1 = data[torch.randint(0, len(data), (args.batch_size,), generator=gen)]
        x0 = torch.randn(args.batch_size, 2, generator=gen)
        ours = ode.minibatch_ot_pairing(x0, x1)  # ours[i] is the noise paired with x1[i]
        plan = sampler.get_map(x0, x1)  # plan[i, j]: mass from noise i to data j
        theirs = torch.empty_like(x0)
        theirs[torch.as_tensor(plan.argmax(1))] = x0
        same += int(torch.equal(theirs, ours))
        cost_gap.append(float((theirs - x1).pow(2).sum() - (ours - x1).pow(2).sum()))
        differ.append(int((theirs != ours).any(1).sum()))
        a0, a1 = sampler.sample_plan(x0, x1)
        d_gm.append(float((ours - x1).pow(2).sum(1).mean()))
        d_cfm.append(float((a0 - a1).pow(2).sum(1).mean()))
        d_ind.append(float((x0 - x1).pow(2).sum(1).mean()))
        distinct.append(len({tuple(p) for p in torch.cat([a0, a1], 1).tolist()}))
    print(f"plans: same permutation in {same} of {args.batches} batches; torchcfm's cost minus gmbench's, "
          f"summed over a batch: {min(cost_gap):+.2e} to {max(cost_gap):+.2e}; pairs that differ: at most {max(differ)}")
    print(f"mean squared pair distance: gmbench {np.mean(d_gm):.4f}, torchcfm's sampled pairs {np.mean(d_cfm):.4f}, "
          f"independent pairs {np.mean(d_ind):.4f}")
    print(f"distinct pairs among torchcfm's {args.batch_size} (sampled with replacement): mean {np.mean(distinct):.1f} "
          f"[{min(distinct)}-{max(distinct)}]; gmbench uses all {args.batch_size} once")


if __name__ == "__main__":
    main()
