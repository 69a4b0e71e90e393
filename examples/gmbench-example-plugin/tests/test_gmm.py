"""The example plugin's own tests: gmbench's conformance kit, and that the fit is real."""

from __future__ import annotations

import torch

from gmbench.data.base import DataSpec
from gmbench.testing import MethodConformance
from gmbench_example_plugin.gmm import GaussianMixture


class TestGaussianMixture(MethodConformance):
    """The method contract on the embedded digits (see gmbench.testing for what is checked)."""

    method = GaussianMixture
    load_entrypoints = False


def test_likelihood_is_a_normalised_density():
    # integrate p(x) on a fine grid over a box holding (almost) all the mass
    torch.manual_seed(0)
    spec = DataSpec(name="two-pixels", modality="image", shape=(1, 1, 2), levels=17, value_range=(-1.0, 1.0))
    gmm = GaussianMixture(spec, components=3)
    with torch.no_grad():
        gmm.mixture["means"].copy_(torch.tensor([[0.0, 0.0], [1.0, -1.0], [-1.0, 0.5]]))
        gmm.mixture["log_scales"].fill_(-1.0)
    axis = torch.linspace(-4, 4, 401)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        mass = gmm.log_likelihood(grid).exp().sum() * (axis[1] - axis[0]) ** 2
    assert abs(float(mass) - 1.0) < 1e-3
