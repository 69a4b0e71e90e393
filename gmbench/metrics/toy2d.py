"""Toy 2-D sample metrics.

Precision side: ``sample_nll`` (true -log p of the samples under the data
density) and ``off_support`` (share of samples where that density is below
1e-6). A model that collapses onto the mixture centres scores *below* the
true entropy, so ``sample_nll`` is never a ranking number on its own.

Coverage side: ``swd`` (sliced Wasserstein-2 to the test split, the primary
metric), ``mmd`` (unbiased RBF MMD^2, median-heuristic bandwidth — mostly a
measure of mode *weights*, not shape) and ``mode_coverage``.

Modes (``mode_coverage``): the components of the mixture. For the built-in
curve mixtures (8gaussians: 8 points; moons: 2 arcs; spirals: 2 arms; rings:
4 circles) a sample belongs to the component whose curve is nearest, if that
distance is below 3 sigma (else to none); for the checkerboard the modes are
its 8 squares. A mode is covered when it receives at least a quarter of the
samples it would get under the data (``n * w_c / 4``). A third-party toy
dataset can define ``mode_of(x) -> (index LongTensor, -1 for none; weights)``;
without it ``mode_coverage`` is None.
"""

from __future__ import annotations

import math

import torch

from gmbench.metrics.base import SKIPPED_OUTPUTS, EvalContext, Metric, MetricOutput
from gmbench.metrics.distances import mmd_rbf, sliced_wasserstein

# A sample whose true density is below this is "off the support" (for the
# checkerboard, exactly zero density).
OFF_SUPPORT_LOG_DENSITY = math.log(1e-6)
MODE_RADIUS_SIGMAS = 3.0
MODE_MIN_SHARE = 0.25  # of the mode's expected count
SWD_PROJECTIONS = 256
MMD_MAX_POINTS = 2000


def mode_of(dataset, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mode index per point, -1 for none; mode weights), or None when undefined."""
    from gmbench.data.toy2d import Checkerboard, CurveMixture

    custom = getattr(dataset, "mode_of", None)
    if callable(custom):
        return custom(x)
    x = x.double().reshape(-1, 2)
    if isinstance(dataset, Checkerboard):
        col = torch.floor((x[:, 0] + 4) / 2)
        row = torch.floor((x[:, 1] + 4) / 2)
        idx = (row * 2 + torch.div(col, 2, rounding_mode="floor")).long()  # 2 dark squares per row
        idx[~dataset.inside(x)] = -1
        return idx, torch.full((8,), 1 / 8, dtype=torch.float64)
    if isinstance(dataset, CurveMixture):
        m = max(1, dataset.quadrature_nodes)
        s = (torch.arange(m, dtype=torch.float64) + 0.5) / m
        nodes = [curve(s) for curve in dataset.curves()]
        dist = torch.stack(
            [torch.cat([torch.cdist(chunk, nd).amin(1) for chunk in x.split(512)]) for nd in nodes], dim=1
        )
        best, idx = dist.min(1)
        idx[best > MODE_RADIUS_SIGMAS * dataset.sigma] = -1
        return idx, dataset.weights().double()
    return None


def mode_coverage(dataset, x: torch.Tensor) -> float | None:
    assigned = mode_of(dataset, x)
    if assigned is None:
        return None
    idx, weights = assigned
    counts = torch.bincount(idx[idx >= 0], minlength=len(weights)).double()
    expected = len(x) * weights
    return float((counts >= MODE_MIN_SHARE * expected).double().mean())


class Toy2DSampleMetrics(Metric):
    name = "toy2d_samples"
    version = "2"
    modalities = ("toy2d",)
    description = "true sample NLL, off-support share, sliced W2, RBF MMD and mode coverage vs the test split"
    outputs = (
        MetricOutput("sample_nll", "lower", "mean true -log p(x) of on-support samples (a precision score)", "nats"),
        MetricOutput("off_support", "lower", "share of samples with true density below 1e-6", "fraction"),
        MetricOutput("swd", "lower", f"sliced Wasserstein-2 to the test split, {SWD_PROJECTIONS} projections", ""),
        MetricOutput("mmd", "lower", "unbiased MMD^2, RBF kernel, median-heuristic bandwidth (mode weights)", ""),
        MetricOutput("mode_coverage", "higher", "share of mixture modes with >= 1/4 of their expected samples", "fraction"),
    )

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        return {
            "reference": "test", "swd_projections": SWD_PROJECTIONS, "mmd_max_points": MMD_MAX_POINTS,
            "mmd_bandwidth": "median", "mode_radius_sigmas": MODE_RADIUS_SIGMAS, "mode_min_share": MODE_MIN_SHARE,
            "off_support_density": 1e-6,
        }

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        samples = samples.cpu()
        out = {
            "swd": sliced_wasserstein(samples, ctx.test, n_projections=SWD_PROJECTIONS, seed=ctx.seed),
            "mmd": mmd_rbf(samples, ctx.test, max_points=MMD_MAX_POINTS, seed=ctx.seed),
            "mode_coverage": mode_coverage(ctx.dataset, samples),
        }
        logp = ctx.dataset.log_prob(samples)
        if logp is None:  # a toy set that can only be sampled (e.g. a plugin's): no true density to read
            why = f"dataset {ctx.dataset.name!r} gives no log_prob, so its true density is unknown"
            return {"sample_nll": None, "off_support": None, **out,
                    SKIPPED_OUTPUTS: {"sample_nll": why, "off_support": why}}
        on = logp > OFF_SUPPORT_LOG_DENSITY
        return {"sample_nll": float(-logp[on].double().mean()) if on.any() else None,
                "off_support": float(1 - on.double().mean()), **out}
