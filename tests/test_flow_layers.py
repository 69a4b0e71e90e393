"""Tests of the invertible layers shared by ``realnvp`` and ``glow`` (gmbench_methods.flows.layers).

Every layer, in float64 and with its parameters moved away from their (often identity)
initialisation: ``x -> y -> x`` within 1e-5, and its log-determinant equal to
``log |det J|`` of autograd's Jacobian, example by example, in small dimension. Also the
whole toy2d and 8x8 image flows of both methods, actnorm's data-dependent initialisation,
the batch-norm layer's two modes, the squeeze's pixel order and the LU form of the 1x1
convolution; and the rational-quadratic spline of ``realnvp[coupling=spline]``
(gmbench_methods.flows.splines, arXiv 1906.04032) on its own: inverse through the bins, at
the knots and in the identity tails, the slope against autograd, the identity at zero
conditioner outputs, and a cost that does not depend on the data.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gmbench.data.base import DataSpec
from gmbench_methods.flows import layers as L
from gmbench_methods.flows import splines as S
from gmbench_methods.flows.glow import Glow
from gmbench_methods.flows.realnvp import RealNVP

torch.set_default_dtype(torch.float32)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturb(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """float64, parameters moved off their initial values (zero-initialised last layers
    would make a coupling the identity and hide a wrong log-determinant)."""
    module.double()
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def jacobian_logdets(fn, x: torch.Tensor) -> torch.Tensor:
    """``log |det d fn(x_i) / d x_i|`` for each example, from autograd's full Jacobian."""
    out = []
    for xi in x:
        def f(v):
            return fn(v.view(1, *xi.shape)).flatten()

        jac = torch.autograd.functional.jacobian(f, xi.flatten())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def check_layer(layer: nn.Module, x: torch.Tensor, atol: float = 1e-9) -> None:
    y, logdet = layer(x)
    assert y.shape[0] == x.shape[0] and y.numel() == x.numel() and logdet.shape == (x.shape[0],)
    back = layer.inverse(y)
    assert (back - x).abs().max() < 1e-5
    torch.testing.assert_close(logdet, jacobian_logdets(lambda v: layer(v)[0], x), rtol=0, atol=atol)


def small_mlp(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, 8), nn.Tanh(), nn.Linear(8, d_out))


def small_conv(c_in: int, c_out: int) -> nn.Module:
    return L.ConvNet(c_in, c_out, hidden=4, norm="actnorm")


VEC = torch.randn(4, 3, generator=gen(1), dtype=torch.float64)
IMG = torch.randn(3, 2, 4, 4, generator=gen(2), dtype=torch.float64)


# ------------------------------------------------------------------------- couplings


@pytest.mark.parametrize("additive", [False, True], ids=["affine", "additive"])
@pytest.mark.parametrize("parity", [0, 1])
def test_masked_coupling_vector(additive, parity):
    layer = perturb(L.MaskedCoupling(L.dimension_mask(3, parity), small_mlp(3, 6), additive=additive))
    check_layer(layer, VEC)
    # the masked dimensions pass unchanged
    b = L.dimension_mask(3, parity).bool().expand_as(VEC)
    assert torch.equal(layer(VEC)[0][b], VEC[b])
    if additive:  # NICE's coupling preserves volume
        assert torch.all(layer(VEC)[1] == 0)


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
@pytest.mark.parametrize("additive", [False, True], ids=["affine", "additive"])
def test_masked_coupling_image(mask, additive):
    b = L.checkerboard_mask(2, 4, 4, 1) if mask == "checkerboard" else L.channel_mask(2, 0)
    layer = perturb(L.MaskedCoupling(b, small_conv(2, 4), additive=additive), seed=3)
    check_layer(layer, IMG)


def test_masks():
    board = L.checkerboard_mask(1, 3, 3, 0)[0, 0]
    assert board.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert torch.equal(L.checkerboard_mask(2, 3, 3, 1), 1 - L.checkerboard_mask(2, 3, 3, 0))
    assert L.channel_mask(4, 0).flatten().tolist() == [1, 1, 0, 0]
    assert L.channel_mask(4, 1).flatten().tolist() == [0, 0, 1, 1]
    assert L.dimension_mask(2, 0).tolist() == [[1, 0]] and L.dimension_mask(2, 1).tolist() == [[0, 1]]


@pytest.mark.parametrize("kind", ["sigmoid", "exp", "additive"])
def test_channel_coupling(kind):
    additive, scale = kind == "additive", "sigmoid" if kind == "additive" else kind
    check_layer(perturb(L.ChannelCoupling(small_mlp(1, 4), additive=additive, scale=scale)), VEC)
    check_layer(perturb(L.ChannelCoupling(small_conv(1, 2), additive=additive, scale=scale), seed=4), IMG)


@pytest.mark.parametrize("parity", [0, 1])
def test_spline_coupling_vector(parity):
    # bound 1.5 on values of std 1.5: about a third of them in the identity tails
    layer = perturb(L.MaskedSplineCoupling(L.dimension_mask(3, parity), small_mlp(3, 3 * 11), bins=4, bound=1.5))
    x = 1.5 * VEC
    assert (x.abs() > 1.5).any() and (x.abs() < 1.5).any()
    check_layer(layer, x)
    b = L.dimension_mask(3, parity).bool().expand_as(x)
    assert torch.equal(layer(x)[0][b], x[b])  # the conditioning dimensions pass unchanged


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_spline_coupling_image(mask):
    b = L.checkerboard_mask(2, 4, 4, 1) if mask == "checkerboard" else L.channel_mask(2, 0)
    layer = perturb(L.MaskedSplineCoupling(b, small_conv(2, 2 * 8), bins=3, bound=1.0), seed=3)
    assert (IMG.abs() > 1.0).any()
    check_layer(layer, IMG)


def test_spline_coupling_starts_as_the_identity():
    """Designed so: zero conditioner outputs give equal bins and unit derivatives (the
    softplus is shifted so that softplus(0 + c) + min = 1), which is the identity map."""
    layer = L.MaskedSplineCoupling(L.dimension_mask(2, 0), L.mlp_conditioner(2, 2 * 23, "tiny"), bins=8).double()
    x = torch.tensor([[0.3, -2.9], [-1.0, 2.2], [4.0, -5.0], [0.0, 3.0]], dtype=torch.float64)
    y, logdet = layer(x)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)


def random_spline(values: int, bins: int, bound: float, seed: int = 0):
    """Knots and derivatives of ``values`` splines from raw conditioner outputs of std 2
    (uneven bins, derivatives far from 1)."""
    theta = 2 * torch.randn(values, 3 * bins - 1, generator=gen(seed), dtype=torch.float64)
    return S.spline_params(theta, bound)


def test_spline_inverts_in_the_bins_at_the_knots_and_in_the_tails():
    bound, bins = 2.0, 5
    kx, ky, d = random_spline(300, bins, bound)
    xs = [
        torch.linspace(-3.5, 3.5, 300, dtype=torch.float64),  # through the bins and both tails
        *kx.unbind(-1),  # each spline at each of its own knots: -B exactly, the bin edges, B exactly
        torch.full((300,), -bound - 1e-12, dtype=torch.float64), torch.full((300,), 1e6, dtype=torch.float64),
    ]
    for x in xs:
        y, _ = S.rational_quadratic_spline(x, kx, ky, d, bound)
        assert (S.rational_quadratic_spline_inverse(y, kx, ky, d, bound) - x).abs().max() < 1e-5
    # the knots map onto the knots; the tails are the identity, exactly
    y, _ = S.rational_quadratic_spline(kx.T.contiguous(), *(t.expand(bins + 1, -1, -1) for t in (kx, ky, d)), bound)
    torch.testing.assert_close(y, ky.T, rtol=0, atol=1e-12)
    tails = torch.tensor([-1e6, -2.5, -bound - 1e-9, bound + 1e-9, 7.0], dtype=torch.float64)
    y, log_slope = S.rational_quadratic_spline(tails, *(t[:5] for t in (kx, ky, d)), bound)
    assert torch.equal(y, tails) and torch.equal(log_slope, torch.zeros(5, dtype=torch.float64))
    assert torch.equal(S.rational_quadratic_spline_inverse(tails, *(t[:5] for t in (kx, ky, d)), bound), tails)


def test_spline_slope_matches_autograd_and_the_map_is_increasing():
    bound = 2.0
    kx, ky, d = random_spline(400, 6, bound, seed=1)
    x = torch.linspace(-2.5, 2.5, 400, dtype=torch.float64).requires_grad_()
    y, log_slope = S.rational_quadratic_spline(x, kx, ky, d, bound)
    (dy,) = torch.autograd.grad(y.sum(), x)  # elementwise map: the Jacobian is diagonal
    torch.testing.assert_close(log_slope, torch.log(dy), rtol=0, atol=1e-9)
    assert (dy > 0).all()
    # knots strictly increasing from -B to B, derivatives 1 at both ends (identity tails)
    assert (kx.diff(dim=-1) > 0).all() and (ky.diff(dim=-1) > 0).all()
    assert (kx[:, 0] == -bound).all() and (kx[:, -1] == bound).all() and (ky[:, -1] == bound).all()
    assert (d[:, 0] == 1).all() and (d[:, -1] == 1).all() and (d > 0).all()


def test_spline_params_layout_and_minimum_bins():
    theta = torch.zeros(1, 3 * 4 - 1, dtype=torch.float64)
    theta[0, 0] = -1e4  # the first width's softmax share is ~0: the minimum bin keeps it open
    kx, ky, d = S.spline_params(theta, 1.0, min_bin=1e-3)
    torch.testing.assert_close(kx[0, 1] - kx[0, 0], torch.tensor(2e-3, dtype=torch.float64))
    torch.testing.assert_close(ky[0], torch.linspace(-1, 1, 5, dtype=torch.float64))  # heights untouched
    torch.testing.assert_close(d[0], torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="3K - 1"):
        S.spline_params(torch.zeros(2, 10), 1.0)


def test_spline_costs_the_same_whatever_the_data():
    """The host charges a training step its counted ops and audits that the cost stays the same
    (docs/integrity.md): the spline's cost must not follow how many values fall in the tails."""
    from gmbench.flops import count_cost

    kx, ky, d = random_spline(64, 8, 3.0, seed=2)
    costs = set()
    for scale in (0.1, 2.0, 50.0):  # all inside, some in the tails, nearly all in the tails
        x = scale * torch.randn(64, generator=gen(3), dtype=torch.float64)
        _, fwd = count_cost(S.rational_quadratic_spline, x, kx, ky, d, 3.0)
        _, inv = count_cost(S.rational_quadratic_spline_inverse, x, kx, ky, d, 3.0)
        costs.add((fwd.total, inv.total))
    assert len(costs) == 1, costs
    (fwd_total, _), = costs
    assert fwd_total >= 64 * 8  # the bin search alone compares each value with the knots


def test_glow_coupling_starts_at_sigmoid_two():
    # zero-initialised net: t = 0, scale = sigmoid(2) everywhere (Glow's released code)
    layer = L.ChannelCoupling(L.ConvNet(1, 2, 4)).double()
    y, logdet = layer(IMG)
    torch.testing.assert_close(y[:, 1:], IMG[:, 1:] * torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)))
    torch.testing.assert_close(logdet, torch.full((3,), 16 * math.log(torch.sigmoid(torch.tensor(2.0)).item()),
                                                  dtype=torch.float64), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- normalisation


def test_batchnorm_flow_eval_is_exact_affine_map():
    layer = perturb(L.BatchNormFlow(2))
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.3, -1.0]))
        layer.running_var.copy_(torch.tensor([2.0, 0.25]))
    layer.eval()
    check_layer(layer, IMG)
    check_layer(perturb(L.BatchNormFlow(3)).eval(), VEC)


def test_batchnorm_flow_training_normalises_with_batch_statistics():
    layer = L.BatchNormFlow(2, momentum=0.5).double()
    x = 3 + 2 * torch.randn(64, 2, 3, 3, generator=gen(5), dtype=torch.float64)
    y, logdet = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-3)
    var = x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(logdet, (-0.5 * torch.log(var + layer.eps)).sum().expand(64) * 9)
    # running averages: (1 - m) * init + m * batch
    torch.testing.assert_close(layer.running_mean, 0.5 * x.mean((0, 2, 3)))
    torch.testing.assert_close(layer.running_var, 0.5 + 0.5 * var)


def test_actnorm():
    check_layer(perturb(L.ActNorm(3)), VEC)
    check_layer(perturb(L.ActNorm(2)), IMG)


@pytest.mark.parametrize("shape", [(500, 3), (50, 2, 4, 4)], ids=["vector", "image"])
def test_actnorm_data_dependent_init_gives_zero_mean_unit_variance(shape):
    spread = torch.tensor([0.1, 3.0, 1.0][: shape[1]], dtype=torch.float64).view(1, -1, *[1] * (len(shape) - 2))
    x = 5.0 + torch.randn(shape, generator=gen(6), dtype=torch.float64) * spread  # channels of different scales
    layer = L.ActNorm(shape[1]).double()
    y, _ = layer(x)
    assert torch.equal(y, x) and int(layer.initialized) == 0  # outside data_init: the identity
    with L.data_init():
        y, _ = layer(x)
    dims = [0] + list(range(2, len(shape)))
    torch.testing.assert_close(y.mean(dims), torch.zeros(shape[1], dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(y.std(dims, unbiased=False), torch.ones(shape[1], dtype=torch.float64), rtol=0, atol=1e-4)  # std / (std + 1e-6)
    assert int(layer.initialized) == 1
    before = [p.clone() for p in layer.parameters()]
    with L.data_init():  # initialised once only
        layer(x * 2)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


# ------------------------------------------------------------------------- linear maps


def test_invconv_lu():
    torch.manual_seed(0)
    layer = perturb(L.InvConv1x1(3), scale=0.2)
    check_layer(layer, VEC)
    w = layer.weight()
    torch.testing.assert_close(torch.linalg.slogdet(w)[1], layer.log_s.sum())
    # W = P L U: L unit lower triangular, U upper, P a permutation
    lower = layer.lower * layer.lower_mask + layer.eye
    assert torch.all(torch.diagonal(lower) == 1) and torch.all(torch.triu(lower, 1) == 0)
    assert torch.all((layer.perm == 0) | (layer.perm == 1)) and torch.all(layer.perm.sum(0) == 1)
    torch.manual_seed(1)
    layer = perturb(L.InvConv1x1(2), scale=0.2)
    check_layer(layer, IMG)
    y, _ = layer(IMG)
    torch.testing.assert_close(y, torch.einsum("ij,njhw->nihw", layer.weight(), IMG))


def test_invconv_starts_as_a_rotation():
    torch.manual_seed(2)
    w = L.InvConv1x1(4).weight()
    torch.testing.assert_close(w @ w.T, torch.eye(4), rtol=0, atol=1e-5)


def test_diagonal_scaling():
    check_layer(perturb(L.DiagonalScaling(3)), VEC)


# ------------------------------------------------------------------------- reshaping


def test_squeeze_order_inverse_and_volume():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = L.squeeze(x)
    assert y.shape == (1, 4, 2, 2)
    # channel k = 2 * di + dj of each 2x2 block
    assert y[0, :, 0, 0].tolist() == [0, 1, 4, 5] and y[0, :, 1, 1].tolist() == [10, 11, 14, 15]
    assert torch.equal(L.unsqueeze(y), x)
    check_layer(L.Squeeze(), IMG)


# ------------------------------------------------------------------------- pre-processing


def test_logit_transform():
    layer = L.LogitTransform(-1.0, 1.0, 0.125, alpha=0.05)
    x = torch.rand(3, 1, 2, 2, generator=gen(7), dtype=torch.float64) * 2.1 - 1.05  # inside [-1.0625, 1.0625]
    check_layer(layer, x)
    # the dequantised range maps onto [logit(alpha), logit(1 - alpha)]
    ends, _ = layer(torch.tensor([[-1.0625, 1.0625]], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([[math.log(0.05 / 0.95), math.log(0.95 / 0.05)]], dtype=torch.float64))


def test_centre_scale():
    layer = L.CentreScale(-1.0, 1.0, 0.125)
    check_layer(layer, IMG)
    y, _ = layer(torch.tensor([[-1.0625, 1.0625]], dtype=torch.float64))
    torch.testing.assert_close(y, torch.tensor([[-0.5, 0.5]], dtype=torch.float64))


def test_dequantise_stays_in_bin():
    x = torch.tensor([-1.0, 0.0, 1.0]).repeat(1000)
    u = L.dequantise(x, 0.125, gen(8)) - x
    assert u.min() >= -0.0625 and u.max() <= 0.0625 and u.abs().mean() > 0.02


def test_split_prior():
    layer = perturb(L.SplitPrior(4))
    z1, eps, logdet = layer(IMG.repeat(1, 2, 1, 1))
    x = IMG.repeat(1, 2, 1, 1)

    def whole(v):
        a, e, _ = layer(v)
        return torch.cat([a.flatten(1), e.flatten(1)], 1)

    assert z1.shape == eps.shape == (3, 2, 4, 4)
    assert (layer.inverse(z1, eps) - x).abs().max() < 1e-5
    torch.testing.assert_close(logdet, jacobian_logdets(whole, x), rtol=0, atol=1e-9)


# ------------------------------------------------------------------------- whole flows

TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
DIGITS = DataSpec(name="img", modality="image", shape=(1, 8, 8), levels=17, value_range=(-1.0, 1.0))


def flow_of(cls, spec, **kwargs):
    torch.manual_seed(0)
    method = cls(spec, model_size="tiny", **kwargs)
    perturb(method.flow, seed=9, scale=0.05)
    for m in method.flow.modules():  # keep batch-norm variances positive after the perturbation
        if isinstance(m, L.BatchNormFlow):
            m.running_var.abs_().add_(0.5)
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.abs_().add_(0.5)
    method.train(False)
    return method


WHOLE = [
    (RealNVP, {}), (RealNVP, {"coupling": "additive"}), (RealNVP, {"norm": "batchnorm"}), (Glow, {}),
    (Glow, {"coupling": "additive"}), (RealNVP, {"coupling": "spline", "tail_bound": 2.0}),
]


@pytest.mark.parametrize("cls,kwargs", WHOLE, ids=lambda v: getattr(v, "name", None) or str(v))
def test_whole_toy2d_flow_inverts_and_logdet_matches_jacobian(cls, kwargs):
    method = flow_of(cls, TOY, **kwargs)
    x = torch.randn(5, 2, generator=gen(10), dtype=torch.float64) * 3
    eps, logdet = method.flow(x)
    assert (method.flow(eps, reverse=True) - x).abs().max() < 1e-5
    autograd_logdet = jacobian_logdets(lambda v: method.flow(v)[0], x)
    torch.testing.assert_close(logdet, autograd_logdet, rtol=0, atol=1e-8)
    # the density by change of variables with autograd's Jacobian, not the flow's own log-det
    torch.testing.assert_close(method.log_prob(x), L.standard_normal_log_prob(eps) + autograd_logdet, rtol=0, atol=1e-8)


@pytest.mark.parametrize("cls,kwargs", [(RealNVP, {}), (RealNVP, {"norm": "batchnorm", "coupling": "additive"}), (Glow, {}),
                                        (RealNVP, {"coupling": "spline", "bins": 4, "tail_bound": 2.0})],
                         ids=["realnvp", "nice-batchnorm", "glow", "realnvp-spline"])
def test_whole_image_flow_inverts_and_logdet_matches_jacobian(cls, kwargs):
    method = flow_of(cls, DIGITS, hidden=4, **kwargs)
    x = L.dequantise(torch.randint(0, 17, (2, 1, 8, 8), generator=gen(11)).double() / 8 - 1, 0.125, gen(12))
    eps, logdet = method.flow(x)
    assert eps.shape == (2, 64)
    assert (method.flow(eps, reverse=True) - x).abs().max() < 1e-5
    torch.testing.assert_close(logdet, jacobian_logdets(lambda v: method.flow(v)[0], x), rtol=0, atol=1e-7)
