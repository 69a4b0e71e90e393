"""Sample-set distances shared by several metrics."""

from __future__ import annotations

import torch


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equal-size point sets.

    Projects both sets on random unit directions and averages the squared 1-D
    W2 (sorted-sample matching), then takes the square root (Rabin et al. 2011;
    Bonneel et al. 2015). Sets of unequal size are cut to the smaller one.
    """
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = torch.sort(a.cpu() @ dirs, dim=0).values
    pb = torch.sort(b.cpu() @ dirs, dim=0).values
    return float((pa - pb).pow(2).mean().sqrt())


def _subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(x) <= n:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def median_bandwidth(a: torch.Tensor, b: torch.Tensor, max_points: int = 1000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance of the pooled sets (Gretton et al. 2012, sec. 8)."""
    pooled = torch.cat([_subset(a, max_points, seed), _subset(b, max_points, seed + 1)]).double()
    d = torch.pdist(pooled)
    return float(d.median())


def mmd_rbf(a: torch.Tensor, b: torch.Tensor, bandwidth: float | None = None, max_points: int = 2000, seed: int = 0) -> float:
    """Unbiased MMD^2 with the Gaussian kernel ``exp(-|x-y|^2 / (2 h^2))``.

    ``h`` defaults to the median heuristic. Sets larger than ``max_points`` are
    subsampled (seeded), which keeps the cost at three ``max_points^2`` kernels.
    The unbiased estimate (Gretton et al. 2012, eq. 3) can be slightly negative.
    """
    a = _subset(a.flatten(1).double().cpu(), max_points, seed)
    b = _subset(b.flatten(1).double().cpu(), max_points, seed + 1)
    h = bandwidth if bandwidth is not None else median_bandwidth(a, b, seed=seed)
    if not h > 0:
        raise ValueError("MMD bandwidth is zero: all points coincide")
    gamma = 1.0 / (2.0 * h * h)

    def mean_kernel(x, y, same):
        k = torch.exp(-gamma * torch.cdist(x, y).pow(2))
        if same:
            m = len(x)
            return float((k.sum() - k.diagonal().sum()) / (m * (m - 1)))
        return float(k.mean())

    return mean_kernel(a, a, True) + mean_kernel(b, b, True) - 2 * mean_kernel(a, b, False)
