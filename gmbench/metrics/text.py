"""Text sample metrics: exact NLL under a known source, and degeneracy guards.

``true_source_nll`` (synthlang and any dataset with an exact ``log_prob``):
every sample is scored exactly under the true source. ``sample_nll_gap_bits``
compares it with what real windows of the same length get, so both a model
that wanders off the language (gap > 0 from above) and one that collapses onto
its most likely phrases (gap > 0 from below) are penalised.

``text_degeneracy`` (every text dataset): the guards the generative-perplexity
literature asks for, since a model that repeats one likely phrase gets an
excellent perplexity. Unigram entropy of the samples' characters (low =
degenerate) and the share of repeated 4-grams within a sample (high = loops),
each beside its absolute gap to the same statistic on the test split.
"""

from __future__ import annotations

import math

import torch

from gmbench.metrics.base import EvalContext, Metric, MetricOutput

NGRAM = 4


class TrueSourceNLL(Metric):
    name = "true_source_nll"
    version = "2"
    modalities = ("text",)
    description = "exact NLL of generated text under the true synthetic source"
    outputs = (
        MetricOutput("sample_nll_bits", "lower", "mean exact -log2 p(sample) per character under the source", "bits/char"),
        MetricOutput(
            "sample_nll_gap_bits",
            "lower",
            "|sample NLL - NLL of real test windows under the source|: 0 for samples as likely as real text",
            "bits/char",
        ),
        MetricOutput("impossible_share", "lower", "share of samples the source cannot produce", "fraction"),
    )

    def applies_to(self, dataset) -> bool:
        return dataset.modality == "text" and dataset.entropy_rate_bits() is not None

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        return {"real_reference": "test split, all windows"}

    def real_bits(self, ctx: EvalContext) -> float:
        """Mean exact bits/char of the test windows (computed once per evaluation)."""

        def compute():
            test = ctx.test
            return float(-ctx.dataset.log_prob(test).double().mean() / (test.shape[1] * math.log(2)))

        return ctx.memoised(("true_source_real_bits",), compute)

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        length = samples.shape[1]
        logp = ctx.dataset.log_prob(samples.cpu())
        ok = torch.isfinite(logp)
        bits = -logp[ok].double() / (length * math.log(2))
        mean_bits = float(bits.mean()) if ok.any() else None
        return {
            "sample_nll_bits": mean_bits,
            "sample_nll_gap_bits": abs(mean_bits - self.real_bits(ctx)) if mean_bits is not None else None,
            "impossible_share": float(1 - ok.double().mean()),
        }


def unigram_entropy_bits(x: torch.Tensor, vocab_size: int) -> float:
    """Entropy in bits of the pooled character distribution of ``x`` (N, L)."""
    counts = torch.bincount(x.flatten().long(), minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def repeated_ngram_rate(x: torch.Tensor, n: int = NGRAM) -> float:
    """Mean over rows of the share of a row's n-grams that already occurred earlier in it."""
    x = x.long()
    if x.shape[1] < n:
        return 0.0
    base = int(x.max()) + 1 if x.numel() else 1
    grams = torch.zeros(x.shape[0], x.shape[1] - n + 1, dtype=torch.long)
    for k in range(n):  # encode each n-gram as one integer
        grams = grams * base + x[:, k: x.shape[1] - n + 1 + k]
    ordered = grams.sort(dim=1).values
    distinct = 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1)
    return float((1.0 - distinct.double() / grams.shape[1]).mean())


class TextDegeneracy(Metric):
    name = "text_degeneracy"
    version = "1"
    modalities = ("text",)
    description = "unigram entropy and repeated 4-gram share of samples, and their gaps to the test split"
    outputs = (
        MetricOutput("unigram_entropy_bits", "higher", "character entropy of the samples (guard: collapse lowers it)", "bits"),
        MetricOutput("unigram_entropy_gap_bits", "lower", "|sample - test split| unigram entropy", "bits"),
        MetricOutput("repeat_4gram_rate", "lower", "share of 4-grams repeated within a sample (guard: loops raise it)", "fraction"),
        MetricOutput("repeat_4gram_gap", "lower", "|sample - test split| repeated 4-gram share", "fraction"),
    )

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        return {"ngram": NGRAM, "real_reference": "test split, all windows"}

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        vocab = ctx.dataset.spec().vocab_size
        real_h, real_rep = ctx.memoised(
            ("degeneracy_real",), lambda: (unigram_entropy_bits(ctx.test, vocab), repeated_ngram_rate(ctx.test))
        )
        h = unigram_entropy_bits(samples, vocab)
        rep = repeated_ngram_rate(samples)
        return {
            "unigram_entropy_bits": h,
            "unigram_entropy_gap_bits": abs(h - real_h),
            "repeat_4gram_rate": rep,
            "repeat_4gram_gap": abs(rep - real_rep),
        }
