"""Toy 2-D sample metrics: the precision side (true NLL of samples under the
data density, share of samples off the support) and the coverage side
(sliced Wasserstein-2 to held-out data)."""

from __future__ import annotations

import math

import torch

from gmbench.metrics.base import EvalContext, Metric, MetricOutput
from gmbench.metrics.distances import sliced_wasserstein

# A sample whose true density is below this is "off the support" (for the
# checkerboard, exactly zero density).
OFF_SUPPORT_LOG_DENSITY = math.log(1e-6)


class Toy2DSampleMetrics(Metric):
    name = "toy2d_samples"
    version = "1"
    modalities = ("toy2d",)
    description = "true sample NLL, off-support share, sliced W2 to the test split"
    outputs = (
        MetricOutput("sample_nll", "lower", "mean true -log p(x) of on-support samples (a precision score)", "nats"),
        MetricOutput("off_support", "lower", "share of samples with true density below 1e-6", "fraction"),
        MetricOutput("swd", "lower", "sliced Wasserstein-2 to the test split, 256 projections", ""),
    )

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        samples = samples.cpu()
        logp = ctx.dataset.log_prob(samples)
        on = logp > OFF_SUPPORT_LOG_DENSITY
        return {
            "sample_nll": float(-logp[on].double().mean()) if on.any() else None,
            "off_support": float(1 - on.double().mean()),
            "swd": sliced_wasserstein(samples, ctx.test, n_projections=256, seed=ctx.seed),
        }
