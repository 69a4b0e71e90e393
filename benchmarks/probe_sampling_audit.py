"""Probe: how much of one sample's work each built-in sampler does outside its counted networks.

Builds every method (untrained, `smoke` model size, seed 0) on each dataset it supports and runs
the host's sampling audit (``gmbench.evaluate.sampling_audit``) at every sampler and NFE of the
`smoke` grid. Prints, per method and dataset, the largest share of FLOPs outside the networks
that ``modules()`` returns, against the share at which a run fails (``UNCOUNTED_SHARE``; see
docs/integrity.md). Training does not change a sampler's arithmetic, so untrained networks do.

    OMP_NUM_THREADS=1 python benchmarks/probe_sampling_audit.py [DATASETS] [METHODS]
"""
import sys

import torch

from gmbench.evaluate import UNCOUNTED_SHARE, sampling_audit
from gmbench.plugins import Registries, make_plugin_manager
from gmbench.runner import make_dataset

reg = Registries(make_plugin_manager())
budget = reg.budgets.get("smoke")
datasets = (sys.argv[1] if len(sys.argv) > 1 else "8gaussians,digits,synthlang").split(",")
methods = sys.argv[2].split(",") if len(sys.argv) > 2 else [n for n in reg.methods.names()]
rows = []
for name in methods:
    cls = reg.methods.get(name)
    for ds in datasets:
        spec = make_dataset(reg.datasets, ds).spec()
        if spec.modality not in cls.modalities:
            continue
        torch.manual_seed(0)
        method = cls(spec, model_size=budget.model_size)
        worst = None
        for s in method.samplers:
            for nfe in (budget.nfe_grid if s.adjustable_nfe else (s.default_nfe,)):
                a = sampling_audit(method, s.name, nfe, torch.Generator().manual_seed(0))
                share = (a["flops"] - a["network_flops"]) / max(a["network_flops"], 1.0)
                if worst is None or share > worst[0]:
                    worst = (share, f"{s.name}@{nfe}", a["calls"], a["flops"])
        rows.append((name, ds) + worst)
print(f"{'method':16} {'dataset':11} {'outside share':>13}  {'setting':24} {'calls':>5} {'FLOPs/sample':>12}")
for name, ds, share, setting, calls, flops in sorted(rows, key=lambda r: -r[2]):
    print(f"{name:16} {ds:11} {share:13.4%}  {setting:24} {calls:5d} {flops:12.3g}")
print(f"a run fails above {UNCOUNTED_SHARE:.0%} (plus 1,000 FLOPs per sample value)")
