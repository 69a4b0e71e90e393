"""A pixel-space distance for images that needs no feature extractor."""

from __future__ import annotations

import torch

from gmbench.metrics.base import EvalContext, Metric, MetricOutput
from gmbench.metrics.distances import sliced_wasserstein


class PixelSlicedWasserstein(Metric):
    name = "pixel_swd"
    version = "1"
    modalities = ("image",)
    description = "sliced Wasserstein-2 between generated and test images in pixel space"
    outputs = (MetricOutput("pixel_swd", "lower", "sliced W2 in pixel space, 512 projections", ""),)

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        lo, hi = ctx.dataset.spec().value_range
        return {"pixel_swd": sliced_wasserstein(samples.cpu().clamp(lo, hi), ctx.test, n_projections=512, seed=ctx.seed)}
