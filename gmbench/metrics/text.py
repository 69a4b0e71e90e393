"""Text sample metrics against a source with an exact likelihood."""

from __future__ import annotations

import math

import torch

from gmbench.metrics.base import EvalContext, Metric, MetricOutput


class TrueSourceNLL(Metric):
    name = "true_source_nll"
    version = "1"
    modalities = ("text",)
    description = "exact NLL of generated text under the true synthetic source"
    outputs = (
        MetricOutput("sample_nll_bits", "lower", "mean exact -log2 p(sample) per character under the source", "bits/char"),
        MetricOutput(
            "sample_nll_gap_bits",
            "lower",
            "|sample NLL - true per-char entropy of test windows|: 0 for samples as likely as real text",
            "bits/char",
        ),
        MetricOutput("impossible_share", "lower", "share of samples the source cannot produce", "fraction"),
    )

    def applies_to(self, dataset) -> bool:
        return dataset.modality == "text" and dataset.entropy_rate_bits() is not None

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        length = samples.shape[1]
        logp = ctx.dataset.log_prob(samples.cpu())
        ok = torch.isfinite(logp)
        bits = -logp[ok].double() / (length * math.log(2))
        test = ctx.test[: len(samples) * 4]
        # Real windows' own NLL: the value samples should match (above the rate
        # for short windows, which start mid-word).
        real_bits = float(-ctx.dataset.log_prob(test).double().mean() / (test.shape[1] * math.log(2)))
        mean_bits = float(bits.mean()) if ok.any() else None
        return {
            "sample_nll_bits": mean_bits,
            "sample_nll_gap_bits": abs(mean_bits - real_bits) if mean_bits is not None else None,
            "impossible_share": float(1 - ok.double().mean()),
        }
