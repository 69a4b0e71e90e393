"""Toy 2-D metrics: precision (true sample NLL, off-support) and coverage (SWD, MMD, modes)."""

from __future__ import annotations

import math

import pytest
import torch

from gmbench.data.toy2d import Checkerboard, EightGaussians, Rings, Toy2D, TwoMoons, TwoSpirals
from gmbench.metrics.base import EvalContext
from gmbench.metrics.distances import median_bandwidth, mmd_rbf
from gmbench.metrics.toy2d import Toy2DSampleMetrics, mode_coverage

METRIC = Toy2DSampleMetrics()


def _score(ds, x):
    return METRIC.score_samples(x, EvalContext(dataset=ds, n_samples=len(x), seed=0))


def _half_modes(ds: EightGaussians, n: int = 2000) -> torch.Tensor:
    x = ds.split("train").x
    angle = torch.atan2(x[:, 1], x[:, 0])
    keep = (angle > -math.pi / 8) & (angle < 7 * math.pi / 8)  # modes at 0, 45, 90, 135 degrees
    return x[keep][:n]


@pytest.mark.parametrize("cls", [EightGaussians, Checkerboard, TwoMoons, TwoSpirals, Rings])
def test_data_itself_covers_every_mode(cls):
    ds = cls()
    x = ds.split("train").x[:2000]
    assert mode_coverage(ds, x) == 1.0


def test_dropping_modes_shows_in_coverage_swd_and_mmd_but_not_in_precision():
    ds = EightGaussians()
    real = _score(ds, ds.split("train").x[:2000])
    half = _score(ds, _half_modes(ds))
    assert half["mode_coverage"] == 0.5 and real["mode_coverage"] == 1.0
    assert half["swd"] > 5 * real["swd"]
    assert half["mmd"] > 50 * abs(real["mmd"]) and half["mmd"] > 0.05
    assert half["off_support"] == real["off_support"] == 0.0
    assert half["sample_nll"] == pytest.approx(real["sample_nll"], abs=0.15)  # precision cannot see it


def test_collapse_onto_centres_scores_below_the_entropy():
    ds = EightGaussians()
    centres = torch.tensor([[4 * math.cos(2 * math.pi * k / 8), 4 * math.sin(2 * math.pi * k / 8)] for k in range(8)])
    collapsed = centres.repeat(250, 1)
    entropy = float(-ds.log_prob(ds.split("test").x).double().mean())
    assert _score(ds, collapsed)["sample_nll"] < entropy - 0.5
    assert _score(ds, collapsed)["mode_coverage"] == 1.0  # every mode is hit: only SWD/MMD see the collapse


def test_off_support_share_on_the_checkerboard():
    ds = Checkerboard()
    x = torch.cat([ds.split("train").x[:750], torch.tensor([[-3.0, -1.0]]).repeat(250, 1)])  # a light square
    out = _score(ds, x)
    assert out["off_support"] == pytest.approx(0.25)
    assert out["sample_nll"] == pytest.approx(math.log(32.0), abs=1e-5)  # uniform on area 32


def test_checkerboard_modes_are_its_squares():
    ds = Checkerboard()
    x = ds.split("train").x
    one_square = x[(x[:, 0] < -2) & (x[:, 1] < -2)][:500]
    assert mode_coverage(ds, one_square) == pytest.approx(1 / 8)


def test_mode_coverage_is_none_without_modes():
    class Blob(Toy2D):
        name = "blob"

        def sample(self, n, generator):
            return torch.randn(n, 2, generator=generator)

    assert mode_coverage(Blob(), torch.zeros(10, 2)) is None


def test_mmd_matches_a_hand_computation():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    h = 1.0
    k = lambda d2: math.exp(-d2 / 2)  # noqa: E731
    xx = k(1.0)  # the off-diagonal pair of a
    yy = k(1.0)
    xy = (k(1.0) + k(4.0) + k(2.0) + k(5.0)) / 4
    assert mmd_rbf(a, b, bandwidth=h) == pytest.approx(xx + yy - 2 * xy)


def test_median_bandwidth_and_unbiased_mmd_of_one_distribution_is_near_zero():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g)
    h = median_bandwidth(a, b)
    assert 1.4 < h < 2.0  # median distance of two standard 2-D normals: sqrt(2 * 2 ln 2) = 1.67
    assert abs(mmd_rbf(a, b)) < 5e-3
    assert mmd_rbf(a, b + 1.0) > 0.1
