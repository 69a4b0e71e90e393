"""Toy 2-D densities: normalised, matching their samplers, deterministic."""

from __future__ import annotations

import math

import pytest
import torch

from gmbench.data.toy2d import TOY2D_DATASETS, Checkerboard, EightGaussians


_GRID_CACHE: dict = {}


def _grid_logp(cls, lo=-7.0, hi=7.0, n=281):
    """log p on a regular grid covering every toy's support, and the cell area."""
    if cls not in _GRID_CACHE:
        xs = torch.linspace(lo, hi, n)
        xx, yy = torch.meshgrid(xs, xs, indexing="ij")
        pts = torch.stack([xx.flatten(), yy.flatten()], 1)
        _GRID_CACHE[cls] = (cls().log_prob(pts).double(), ((hi - lo) / (n - 1)) ** 2)
    return _GRID_CACHE[cls]


@pytest.mark.parametrize("cls", TOY2D_DATASETS, ids=lambda c: c.name)
def test_density_integrates_to_one(cls):
    lp, cell = _grid_logp(cls)
    mass = float(lp.exp().sum() * cell)
    assert mass == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("cls", TOY2D_DATASETS, ids=lambda c: c.name)
def test_samples_follow_the_density(cls):
    """Mean log-density of samples estimates -entropy; it must equal the same
    estimate from a grid integral (a wrong sampler or density breaks this)."""
    ds = cls()
    x = ds.split("test").x
    logp = ds.log_prob(x).double()
    assert torch.isfinite(logp).all()
    lp, cell = _grid_logp(cls)
    p = lp.exp()
    neg_entropy = float((p * torch.where(p > 0, lp, torch.zeros_like(lp))).sum() * cell)
    assert float(logp.mean()) == pytest.approx(neg_entropy, abs=0.06)


def test_eight_gaussians_density_is_the_closed_form():
    ds = EightGaussians()
    x = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    comps = [(4 * math.cos(2 * math.pi * k / 8), 4 * math.sin(2 * math.pi * k / 8)) for k in range(8)]

    def p(pt):
        return sum(
            math.exp(-((pt[0] - a) ** 2 + (pt[1] - b) ** 2) / (2 * 0.25)) / (2 * math.pi * 0.25) / 8 for a, b in comps
        )

    expected = torch.tensor([math.log(p(pt)) for pt in x.tolist()])
    assert torch.allclose(ds.log_prob(x), expected, atol=1e-5)


def test_checkerboard_support():
    ds = Checkerboard()
    x = ds.split("train").x
    assert ds.inside(x).all()
    assert torch.equal(ds.log_prob(torch.tensor([[-3.0, -3.0], [-1.0, -3.0]])), torch.tensor([-math.log(32), -math.inf]))


def test_splits_are_deterministic_and_distinct():
    a, b, c = EightGaussians(), EightGaussians(), EightGaussians(data_seed=1)
    assert torch.equal(a.split("train").x, b.split("train").x)
    assert not torch.equal(a.split("train").x[:100], a.split("test").x[:100])
    assert not torch.equal(a.split("train").x, c.split("train").x)
    assert len(a.split("train")) == 20000 and len(a.split("test")) == 5000
