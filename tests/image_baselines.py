"""Trivial image baselines for the "it learns" tests of image-only methods (LDM, MAR).

Sliced W2 on 64-pixel digits is nearly blind to what separates a digit from noise with the
right pixel statistics: a Gaussian fitted pixel by pixel to the training images scores 0.154,
better than MAR after a sixth of `smoke` (0.23). The FID of gmbench's digits classifier does
see it (256 images each, against the train split: the per-pixel Gaussian 209, uniform noise
280, training images 2.9), so these tests require beating the per-pixel Gaussian there, and
on sliced W2 as well.
"""

from __future__ import annotations

import torch

from gmbench.metrics.base import EvalContext
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.metrics.images import ImageFidelity


def pixel_gaussian(train_x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` images whose pixels are independent Gaussians with the training images' per-pixel
    mean and standard deviation, clamped to the data's range [-1, 1]."""
    noise = torch.randn((n, *train_x.shape[1:]), generator=generator)
    return (train_x.mean(0) + train_x.std(0) * noise).clamp(-1, 1)


def image_scores(x: torch.Tensor, dataset, cache_dir) -> dict:
    """FID of ``x`` against the dataset's training split (the evaluator's reference, digits
    classifier features) and sliced W2 against its test split."""
    ctx = EvalContext(dataset=dataset, n_samples=len(x), seed=0, cache_dir=str(cache_dir))
    fid = ImageFidelity().score_samples(x, ctx)["fid"]
    swd = float(sliced_wasserstein(x.flatten(1), dataset.split("test").x.flatten(1)))
    return {"fid": fid, "swd": swd}
