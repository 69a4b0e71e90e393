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
