"""Probe: how close are each text method's samples to the data, after the smoke budget?

An investigation aid (docs/claims_small.md, BD3-LM's samples), not a timed test. Trains each
model on 16-character synthlang windows at the ``smoke`` budget (the learning tests' setup),
draws 512 samples per step count and reports the total variation distance between the
samples' bigram distribution and the test split's: lower is closer. References: unigram noise
(test windows with their characters shuffled) and the training windows themselves. BD3-LM is
also sampled with its KV cache and its prediction cache off (the tokens must not change).

    OMP_NUM_THREADS=1 python benchmarks/probe_text_samples.py
"""

from __future__ import annotations

import torch

from gmbench.budget import SMOKE
from gmbench.data.synthlang import SyntheticLanguage
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.training import train

DATA = SyntheticLanguage(seq_len=16, n_train=4000, n_test=500)
V = DATA.spec().vocab_size


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bigrams(x: torch.Tensor) -> torch.Tensor:
    counts = torch.zeros(V, V)
    counts.index_put_((x[:, :-1].flatten(), x[:, 1:].flatten()), torch.ones(x[:, 1:].numel()), accumulate=True)
    return counts / counts.sum()


REF = bigrams(DATA.split("test").x)


def tv(x: torch.Tensor) -> float:
    return float(0.5 * (bigrams(x) - REF).abs().sum())


def main() -> None:
    from gmbench_methods.discrete_diffusion.ar import AR
    from gmbench_methods.discrete_diffusion.bd3lm import BD3LM
    from gmbench_methods.discrete_diffusion.mdlm import MDLM

    test = DATA.split("test").x
    shuffled = torch.stack([row[torch.randperm(16, generator=gen(i))] for i, row in enumerate(test)])
    print(f"references: training windows {tv(DATA.split('train').x[:2000]):.3f}, unigram noise {tv(shuffled):.3f}")
    models = [(AR, {}, (16,)), (MDLM, {}, (4, 16, 64)), (BD3LM, {}, (4, 16, 64)),
              (BD3LM, {"block_size": 1}, (4, 16)), (BD3LM, {"block_size": 16}, (4, 16)),
              (BD3LM, {"clip_min": 0.0, "clip_max": 1.0}, (4, 16))]
    for cls, kw, nfes in models:
        torch.manual_seed(0)
        method = cls(DATA.spec(), model_size=SMOKE.model_size, **kw)
        train(method, DATA.split("train").x, SMOKE, "text", gen(0))
        method.train(False)
        bpc = HeldOutLikelihood().score_model(method, EvalContext(dataset=DATA, n_samples=0, seed=0))["test_bpc"]
        cells = []
        for nfe in nfes:
            with torch.no_grad():
                x = method.sample(512, "ancestral", nfe, gen(1))
                if cls is BD3LM:  # the caches must not change the tokens
                    method.kv_cache = method.cache = False
                    assert torch.equal(x, method.sample(512, "ancestral", nfe, gen(1)))
                    method.kv_cache = method.cache = True
            cells.append(f"NFE {nfe}: {tv(x):.3f}")
        print(f"{cls.name}{kw or ''}: test bits/char {bpc:.3f}; bigram TV " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
