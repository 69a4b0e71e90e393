"""Sampling speed of the text methods: tokens per second per method, sampler and NFE, with
and without each method's caching (issue: discrete diffusion LMs). Not a timed test.

Speed does not depend on the weights, so the models are untrained, built at the ``small``
size preset for synthlang's windows (64 characters), the shapes of the ``small`` boards.
Each setting draws ``--rows`` sequences ``--repeats`` times after one warm-up draw; the
median is reported. Caching options compared:

* ``ar``: ``cache`` (the backbone's KV cache) on/off: the same tokens either way;
* ``mdlm``: ``cache`` (reuse the prediction of a sequence no token of which changed);
* ``bd3lm``: ``kv_cache`` (keys/values of finished blocks) and ``cache`` (mdlm's, per block);
* ``d3pm``, ``sedd``: no caching option.

    OMP_NUM_THREADS=1 python benchmarks/bench_text_sampling.py [--rows 64] [--repeats 3] [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

SETTINGS = [
    ("ar", {}, "ancestral", (64,)),
    ("ar", {"cache": False}, "ancestral", (64,)),
    ("mdlm", {}, "ancestral", (10, 64, 256)),
    ("mdlm", {"cache": False}, "ancestral", (10, 64, 256)),
    ("bd3lm", {}, "ancestral", (4, 16)),
    ("bd3lm", {"kv_cache": False}, "ancestral", (4, 16)),
    ("bd3lm", {"kv_cache": False, "cache": False}, "ancestral", (4, 16)),
    ("d3pm", {}, "ancestral", (10, 64, 256)),
    ("sedd", {}, "euler", (10, 64, 256)),
    ("sedd", {}, "analytic", (10, 64, 256)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default="small")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    from gmbench.data.synthlang import SyntheticLanguage
    from gmbench.plugins import Registries, make_plugin_manager

    reg = Registries(make_plugin_manager())
    spec = SyntheticLanguage().spec()
    rows = []
    for name, hparams, sampler, nfes in SETTINGS:
        torch.manual_seed(0)
        method = reg.methods.get(name)(spec, model_size=args.size, **hparams)
        method.train(False)
        for nfe in nfes:
            method.sample(args.rows, sampler, nfe, torch.Generator().manual_seed(0))  # warm-up
            times = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                out = method.sample(args.rows, sampler, nfe, torch.Generator().manual_seed(1 + r))
                times.append(time.perf_counter() - t0)
            sec = statistics.median(times)
            tokens = out.numel()
            label = name + ("[" + ", ".join(f"{k}={v}" for k, v in hparams.items()) + "]" if hparams else "")
            rows.append([label, sampler, nfe, f"{tokens / sec:,.0f}", f"{1000 * sec / args.rows:.2f}"])
            print(*rows[-1], flush=True)
    print()
    print(tabulate(rows, headers=["method", "sampler", "NFE", "tokens/s", "ms per sequence"],
                   tablefmt="github" if args.markdown else "simple", disable_numparse=True))
    print(f"\n{args.rows} sequences of {spec.shape[0]} tokens per draw, median of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}, size preset {args.size}")


if __name__ == "__main__":
    main()
