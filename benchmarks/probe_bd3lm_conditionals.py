"""Probe: are BD3-LM's poor samples a conditioning defect or its network's conditionals?

An investigation aid (docs/claims_small.md, "BD3-LM's samples"), not a timed test. Trains
``ar`` and ``bd3lm`` (blocks of 4) on 16-character synthlang windows at the ``smoke`` budget,
as benchmarks/probe_text_samples.py does, then

1. scores 512 samples by the bigram total variation distance to the test split, split into
   bigrams inside a block and bigrams across a block boundary (the latter pair a token of a
   finished block with the first token of the next, the one drawn from the finished blocks
   alone): for BD3-LM's own sampler (random order inside a block, as the paper's Alg. 2) and
   for the same network decoded left to right and right to left inside each block (one
   token per call);
2. on 400 test windows, the NLL (nats) of each position under BD3-LM given the clean prefix
   and the earlier positions of its own block (the rest of the block masked), and given the
   clean prefix alone (the whole block masked), beside AR's NLL given the whole prefix.

If BD3-LM conditioned on the finished blocks worse at sampling than in training, the first
token of each block would stand out in (2) and the boundary bigrams in (1).

    OMP_NUM_THREADS=1 python benchmarks/probe_bd3lm_conditionals.py [SEED]
"""

from __future__ import annotations

import sys

import torch

from gmbench.budget import SMOKE
from gmbench.metrics.base import EvalContext
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.training import train
from probe_text_samples import DATA, V, gen, tv

L, B, N = 16, 4, 512
TEST = DATA.split("test").x.long()


def pair_tv(x: torch.Tensor, starts: list[int]) -> float:
    """Bigram TV to the test split over the position pairs ``(i, i + 1)``, ``i`` in ``starts``."""

    def dist(y: torch.Tensor) -> torch.Tensor:
        counts = torch.zeros(V, V)
        for i in starts:
            counts.index_put_((y[:, i], y[:, i + 1]), torch.ones(len(y)), accumulate=True)
        return counts / counts.sum()

    return float(0.5 * (dist(x) - dist(TEST)).abs().sum())


INSIDE = [i for i in range(L - 1) if i % B != B - 1]
ACROSS = [i for i in range(L - 1) if i % B == B - 1]


def report(name: str, x: torch.Tensor) -> None:
    print(f"{name:42s} bigram TV all {tv(x):.3f}, inside blocks {pair_tv(x, INSIDE):.3f}, "
          f"across boundaries {pair_tv(x, ACROSS):.3f}", flush=True)


def fixed_order(method, order: list[int], seed: int) -> torch.Tensor:
    """BD3-LM's network decoded one token per call in a fixed order inside each block."""
    g, x = gen(seed), torch.full((N, L), method.mask_id, dtype=torch.long)
    for b in range(L // B):
        for k in order:
            probs = method._block_log_probs(x, b, torch.arange(N), None, True).exp()[:, k, :V]
            x[:, b * B + k] = torch.multinomial(probs.float(), 1, generator=g).squeeze(1)
    return x


def main() -> None:
    from gmbench_methods.discrete_diffusion.ar import AR
    from gmbench_methods.discrete_diffusion.bd3lm import BD3LM

    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    train_x = DATA.split("train").x
    report("training windows", train_x[:2000])
    models = {}
    for cls in (AR, BD3LM):
        torch.manual_seed(seed)
        method = cls(DATA.spec(), model_size=SMOKE.model_size)
        train(method, train_x, SMOKE, "text", gen(seed))
        method.train(False)
        bpc = HeldOutLikelihood().score_model(method, EvalContext(dataset=DATA, n_samples=0, seed=0))["test_bpc"]
        print(f"{cls.name}: test bits/char {bpc:.3f}")
        models[cls.name] = method
    ar, bd = models["ar"], models["bd3lm"]
    with torch.no_grad():
        report("ar, ancestral", ar.sample(N, "ancestral", L, gen(1)))
        for nfe in (4, 64):
            report(f"bd3lm, its sampler, {nfe} steps per block", bd.sample(N, "ancestral", nfe, gen(1)))
        report("bd3lm, left to right inside blocks", fixed_order(bd, list(range(B)), 1))
        report("bd3lm, right to left inside blocks", fixed_order(bd, list(range(B))[::-1], 1))

        x = TEST[:400]
        ar_nll = -torch.log_softmax(ar.logits(x).float(), -1).gather(-1, x[..., None]).squeeze(-1).mean(0)
        rows = torch.arange(len(x))
        print("\nposition: AR | BD3-LM, earlier tokens of the block clean | BD3-LM, whole block masked (nats)")
        for b in range(L // B):
            z = x.clone()
            z[:, b * B:] = bd.mask_id
            alone = -bd._block_log_probs(z, b, rows, None, True)[..., :V].float().gather(
                -1, x[:, b * B:(b + 1) * B, None]).squeeze(-1).mean(0)
            for k in range(B):
                z = x.clone()
                z[:, b * B + k:] = bd.mask_id
                lp = bd._block_log_probs(z, b, rows, None, True)[:, k, :V].float()
                ordered = -lp.gather(-1, x[:, b * B + k, None]).mean()
                print(f"{b * B + k:2d}: {ar_nll[b * B + k]:.3f} | {ordered:.3f} | {alone[k]:.3f}")


if __name__ == "__main__":
    main()
