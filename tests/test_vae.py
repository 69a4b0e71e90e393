"""Tests for the `vae` plugin (Kingma & Welling, arXiv 1312.6114).

Closed forms checked: the Gaussian KL (App. B), the reparameterised gradient of
E[z^2], and, for a linear Gaussian decoder (probabilistic PCA), the exact
marginal log p(x), the exact posterior and the exact ELBO of any Gaussian q.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from gmbench import hookimpl
from gmbench.budget import SMOKE, Budget
from gmbench.data.base import DataSpec
from gmbench.data.digits import Digits
from gmbench.data.toy2d import EightGaussians
from gmbench.method import MethodError
from gmbench.metrics.base import EvalContext
from gmbench.metrics.distances import sliced_wasserstein
from gmbench.metrics.likelihood import HeldOutLikelihood
from gmbench.testing import MethodConformance
from gmbench.training import train
from gmbench_methods.latent_variable import vae as vae_module
from gmbench_methods.latent_variable.vae import VAE, gaussian_log_prob, kl_to_standard_normal, reparameterise

TOY = DataSpec(name="toy", modality="toy2d", shape=(2,))
IMG = DataSpec(name="img", modality="image", shape=(1, 2, 2), levels=17, value_range=(-1.0, 1.0))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ closed forms


def test_kl_matches_closed_form_torch_and_monte_carlo():
    mu = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, -0.5]], dtype=torch.float64)
    std = torch.tensor([[1.0, 1.0], [1.0, 2.0], [0.3, 1.5]], dtype=torch.float64)
    log_var = 2 * std.log()
    kl = kl_to_standard_normal(mu, log_var)
    # by hand: 0; 0.5 * 1^2 + 0.5 * (4 - 1 - ln 4); per dim 0.5 (s^2 + m^2 - 1 - ln s^2)
    by_hand = 0.5 * (std**2 + mu**2 - 1 - torch.log(std**2)).sum(-1)
    assert kl[0] == 0
    assert kl[1] == pytest.approx(0.5 + 0.5 * (3 - math.log(4)), abs=1e-12)
    torch.testing.assert_close(kl, by_hand)
    torch.testing.assert_close(kl, kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(-1))
    # Monte Carlo: E_q[log q(z) - log p(z)]
    z = mu + std * torch.randn(200_000, *mu.shape, generator=gen(), dtype=torch.float64)
    terms = gaussian_log_prob(z, mu, std) - gaussian_log_prob(z, torch.zeros_like(z), torch.ones_like(z))
    se = terms.std(0) / math.sqrt(len(terms))
    assert ((terms.mean(0) - kl).abs() < 5 * se + 1e-9).all()


def test_gaussian_log_prob_matches_torch_distributions():
    g = gen(1)
    x, mean = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    std = torch.rand(7, 5, generator=g) * 2 + 0.05
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), Normal(mean, std).log_prob(x).sum(-1))


def test_reparameterised_gradient_is_unbiased():
    # f(z) = z^2, z ~ N(mu, s^2): E f = mu^2 + s^2, so dE/dmu = 2 mu and dE/dlog s^2 = s^2.
    mu = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    log_var = torch.tensor([math.log(0.5), math.log(2.0)], dtype=torch.float64, requires_grad=True)
    n = 200_000
    z = reparameterise(mu, log_var, gen(2), k=n)
    assert z.shape == (n, 2)
    z.pow(2).sum(-1).mean().backward()
    # standard error of the gradient estimate of mu: per-sample gradient is 2 z
    se = 2 * z.detach().std(0) / math.sqrt(n)
    assert ((mu.grad - 2 * mu.detach()).abs() < 5 * se).all()
    assert torch.allclose(log_var.grad, log_var.detach().exp(), rtol=0.05)


# ------------------------------------------- linear Gaussian VAE (probabilistic PCA)


def ppca(spec: DataSpec, latent: int, seed: int):
    """A linear decoder x = W z + b + sigma eps with orthogonal columns of W.

    Then W^T W is diagonal, the exact posterior N(M^-1 W^T (x - b), sigma^2 M^-1)
    with M = W^T W + sigma^2 I is diagonal, so a diagonal encoder can be exact.
    """
    g = gen(seed)
    d = spec.dims
    q, _ = torch.linalg.qr(torch.randn(d, latent, generator=g, dtype=torch.float64))
    scales = torch.linspace(2.0, 0.7, latent, dtype=torch.float64)
    w, b, sigma = q * scales, torch.randn(d, generator=g, dtype=torch.float64), 0.4
    m_diag = (w * w).sum(0) + sigma**2
    marginal = MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(d, dtype=torch.float64))
    model = VAE(spec, model_size="tiny", latent_dim=latent)
    model.decode = lambda z: (z @ w.T + b, torch.full((z.shape[0], d), sigma, dtype=torch.float64))

    def exact_posterior(x):
        return (x - b) @ w / m_diag, (sigma**2 / m_diag).log().expand(x.shape[0], latent)

    def closed_form_elbo(x, mu, log_var):
        # E_q log N(x; Wz + b, s^2 I) = log N(x; W mu + b, s^2 I) - tr(W^T W diag(var)) / (2 s^2)
        rec = gaussian_log_prob(x, mu @ w.T + b, torch.full_like(x, sigma))
        rec = rec - (log_var.exp() * (w * w).sum(0)).sum(-1) / (2 * sigma**2)
        return rec - kl_to_standard_normal(mu, log_var)

    x = marginal.sample((12,))
    return model, x, marginal.log_prob(x), exact_posterior, closed_form_elbo


@pytest.mark.parametrize("spec,latent", [(TOY, 2), (IMG, 2)], ids=["toy2d", "image-4d"])
def test_elbo_bounds_exact_marginal_and_is_tight_at_exact_posterior(spec, latent):
    model, x, log_px, exact_posterior, closed_form_elbo = ppca(spec, latent, seed=3)
    xs = x.reshape(-1, *spec.shape)
    reps = 4000

    def mc_elbo(model):
        ll = model.log_likelihood(xs.repeat(reps, *[1] * len(spec.shape)), gen(4)).view(reps, -1)
        return ll.mean(0), ll.std(0) / math.sqrt(reps)

    # 1) the exact posterior: every importance weight equals p(x), so L_k = log p(x) exactly,
    #    and the ELBO equals log p(x) in expectation.
    model.encode = exact_posterior
    model.iw_samples = 5
    torch.testing.assert_close(model.log_likelihood(xs, gen(5)), log_px, rtol=0, atol=1e-9)
    model.iw_samples = 1
    elbo, se = mc_elbo(model)
    assert ((elbo - log_px).abs() < 5 * se + 1e-9).all()

    # 2) a wrong encoder (shifted mean, too wide): the ELBO matches its closed form and
    #    lies below log p(x) at every point; L_k lies between the two.
    def wrong(x):
        mu, log_var = exact_posterior(x)
        return mu + 0.5, log_var + math.log(2.0)

    model.encode = wrong
    elbo, se = mc_elbo(model)
    exact_elbo = closed_form_elbo(x, *wrong(x))
    assert ((elbo - exact_elbo).abs() < 5 * se).all()
    assert (elbo + 5 * se < log_px).all()
    model.iw_samples = 50
    iw = model.log_likelihood(xs.repeat(200, *[1] * len(spec.shape)), gen(6)).view(200, -1).mean(0)
    assert (iw > elbo).all() and (iw < log_px).all()


# ------------------------------------------------------------------ host training


def smoke_train(dataset, seed=0, budget=SMOKE, **kwargs):
    spec = dataset.spec()
    torch.manual_seed(seed)
    model = VAE(spec, model_size=budget.model_size, **kwargs)
    untrained_ll = HeldOutLikelihood().score_model(model, EvalContext(dataset=dataset, n_samples=0, seed=0))
    reports = train(model, dataset.split("train").x, budget, spec.modality, gen(seed))
    return model, reports, untrained_ll


def test_learns_8gaussians_on_smoke_budget():
    data = EightGaussians()
    test = data.split("test").x
    model, reports, untrained = smoke_train(data)
    assert reports[0].steps > 50 and reports[0].flops <= SMOKE.flops_for("toy2d")
    trained = HeldOutLikelihood().score_model(model, EvalContext(dataset=data, n_samples=0, seed=0))
    # The true entropy is log 8 + 1 + log(2 pi 0.25) = 3.53 nats; a fitted Gaussian gets ~4.95.
    assert trained["test_nll"] < untrained["test_nll"] - 5
    assert trained["test_nll"] < 4.8

    # Samples beat a Gaussian fitted to the training data (full covariance) in sliced W2.
    train_x = data.split("train").x
    cov_chol = torch.linalg.cholesky(torch.cov(train_x.T))
    baseline = train_x.mean(0) + torch.randn(2000, 2, generator=gen(7)) @ cov_chol.T
    base_swd = sliced_wasserstein(baseline, test, seed=0)
    for sampler in ("prior", "mean"):
        swd = sliced_wasserstein(model.sample(2000, sampler, 1, gen(8)), test, seed=0)
        assert swd < 0.7 * base_swd, (sampler, swd, base_swd)


# `smoke` with an eighth of its image FLOPs (~800 steps), to keep this file fast on a CPU
QUICK = dataclasses.replace(SMOKE, name="vae-quick", train_flops={**SMOKE.train_flops, "image": 4e10})


class QuickBudget:
    @hookimpl
    def gmbench_register_budgets(self, register):
        register(QUICK)


def test_digits_smoke_run_through_the_host(tmp_path):
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.records import RunSpec
    from gmbench.runner import run_one

    pm = make_plugin_manager(extra_plugins=(vae_module, QuickBudget()), load_entrypoints=False)
    record = run_one(RunSpec("vae", "digits", QUICK.name, seed=0), Registries(pm), tmp_path)
    assert record["status"] == "ok", record.get("error")
    values = {(m["name"], m["sampler"]): m["value"] for m in record["metrics"]}
    assert math.isfinite(values[("test_bpd", None)]) and values[("test_bpd", None)] < 4.0
    assert {m["label"] for m in record["metrics"] if m["name"] == "test_bpd"} == {"bound"}
    for sampler in ("prior", "mean"):
        assert math.isfinite(values[("pixel_swd", sampler)])
        assert {c["nfe"] for c in record["cost"]["sampling"] if c["sampler"] == sampler} == {1}


def test_image_samples_shape_range_and_std_floor():
    model = VAE(Digits().spec(), model_size="tiny")
    for sampler in ("prior", "mean"):
        x = model.sample(9, sampler, 1, gen())
        assert x.shape == (9, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    # floor: half the std of uniform noise over one of 17 bins on [-1, 1]
    assert model.min_std == pytest.approx((2 / 16) / (2 * math.sqrt(12)))
    with torch.no_grad():
        model.decoder.out.bias[64:].fill_(-1e4)
    _, std = model.decode(torch.zeros(3, model.latent_dim))
    assert torch.all(std == model.min_std)


# ------------------------------------------------------------------ determinism


def test_determinism_given_seeds():
    data = EightGaussians()
    tiny = Budget("tiny", {"toy2d": 2e9}, {"toy2d": 64}, 60, "tiny", {"toy2d": 100}, (1,))
    a, _, _ = smoke_train(data, budget=tiny)
    b, _, _ = smoke_train(data, budget=tiny)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    x = data.split("test").x[:50]
    for sampler in ("prior", "mean"):
        assert torch.equal(a.sample(20, sampler, 1, gen(3)), a.sample(20, sampler, 1, gen(3)))
    assert not torch.equal(a.sample(20, "prior", 1, gen(3)), a.sample(20, "prior", 1, gen(4)))
    assert torch.equal(a.log_likelihood(x, gen(5)), a.log_likelihood(x, gen(5)))
    a.iw_samples = 8
    assert torch.equal(a.log_likelihood(x, gen(5)), a.log_likelihood(x, gen(5)))


# ------------------------------------------------------------------ contract


def test_contract_and_registration():
    assert (VAE.name, VAE.family, VAE.paper, VAE.likelihood) == ("vae", "latent-variable", "1312.6114", "bound")
    assert [(s.name, s.adjustable_nfe, s.default_nfe) for s in VAE.samplers] == [("prior", False, 1), ("mean", False, 1)]
    eps = {ep.name: ep.value for ep in md.entry_points(group="gmbench")}
    assert eps.get("vae") == "gmbench_methods.latent_variable.vae"
    registered = []
    vae_module.gmbench_register_methods(registered.append)
    assert registered == [VAE]
    model = VAE(TOY, model_size="tiny")
    assert model.latent_dim == 2 and VAE(IMG, model_size="tiny").latent_dim == 16
    assert set(model.modules()) == {"encoder", "decoder"}
    shared = VAE(TOY, model_size="tiny", decoder_std="shared")
    assert set(shared.modules()) == {"encoder", "decoder", "shared_std"}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"decoder_std": "learned"}, "decoder_std must be one of"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"iw_samples": 0}, "iw_samples must be a positive integer"),
        ({"min_std": -1.0}, "min_std must be > 0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"backbone": "resnet"}, "backbone must be one of"),
        ({"backbone": "unet"}, "backbone='unet' needs image data, not 'toy2d'"),
    ],
)
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(MethodError, match=match) as err:
        VAE(TOY, model_size="tiny", **kwargs)
    assert "\n" not in str(err.value)


def test_bad_inputs_raise_one_line():
    model = VAE(TOY, model_size="tiny")
    with pytest.raises(MethodError, match=r"expected inputs of shape \(n, 2\)"):
        model.log_likelihood(torch.zeros(4, 3), gen())
    with pytest.raises(MethodError, match="did you mean|Did you mean"):
        model.sample(4, "prior_", 1, gen())
    with pytest.raises(MethodError, match="does not support 'text'"):
        VAE(DataSpec(name="t", modality="text", shape=(8,), vocab_size=5))


# ------------------------------------------------------------------ conformance kit


class TestVAEConformanceToy(MethodConformance):
    method = VAE
    dataset = "8gaussians"


class TestVAEConformanceDigits(MethodConformance):
    method = VAE
    dataset = "digits"


class TestVAEConformanceDigitsUNet(MethodConformance):
    method = VAE
    dataset = "digits"
    hparams = {"backbone": "unet"}


# ------------------------------------------------------------------ U-Net backbone

# `smoke` buys two tiny U-Nets only 25 steps on digits: the bound falls from 4.84 to 3.80
# bits/dim, short of the per-pixel Gaussian below (3.36). Four times its image FLOPs
# (~100 steps) reach 3.23 (seed 0).
UNET_QUICK = dataclasses.replace(SMOKE, name="vae-unet-quick", train_flops={**SMOKE.train_flops, "image": 1.2e12})


def per_pixel_gaussian_bpd(data) -> float:
    """Test bits/dim of independent per-pixel Gaussians fitted to the dequantised train split,
    scored like :class:`HeldOutLikelihood`: ``(-log p(x + u) - D log delta) / (D ln 2)``."""
    spec = data.spec()
    delta = (spec.value_range[1] - spec.value_range[0]) / (spec.levels - 1)
    g = gen(11)

    def dequantised(split):
        x = data.split(split).x.flatten(1).double()
        return x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * delta

    train_x, test_x = dequantised("train"), dequantised("test")
    ll = Normal(train_x.mean(0), train_x.std(0)).log_prob(test_x).sum(1)
    d = test_x.shape[1]
    return float(((-ll - d * math.log(delta)) / (d * math.log(2))).mean())


def test_unet_backbone_learns_digits():
    data = Digits()
    model, reports, untrained = smoke_train(data, budget=UNET_QUICK, backbone="unet")
    assert reports[0].steps >= 50 and reports[0].flops <= UNET_QUICK.flops_for("image")
    trained = HeldOutLikelihood().score_model(model, EvalContext(dataset=data, n_samples=0, seed=0))
    baseline = per_pixel_gaussian_bpd(data)
    assert 3.0 < baseline < 3.7  # the baseline itself is sane (3.36 bits/dim)
    assert trained["test_bpd"] < untrained["test_bpd"] - 1.0
    assert trained["test_bpd"] < baseline, (trained["test_bpd"], baseline)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_unet_backbone_is_ddpm_network_and_parameter_count(size):
    from gmbench.backbones import UNet, count_parameters
    from gmbench.method import backbone_label
    from gmbench_methods.diffusion.ddpm import DDPM

    spec = Digits().spec()
    mlp, unet, ddpm = VAE(spec, model_size=size), VAE(spec, model_size=size, backbone="unet"), DDPM(spec, model_size=size)
    assert isinstance(unet.encoder.unet, UNet) and isinstance(unet.decoder.unet, UNet) and isinstance(ddpm.net, UNet)
    # each of the VAE's U-Nets is ddpm's at the same preset, less the time embedding (cond=False)
    for net in (unet.encoder.unet, unet.decoder.unet):
        assert 0.8 < count_parameters(net) / count_parameters(ddpm.net) < 1.0
    # the linear heads are small beside the trunks
    assert count_parameters(unet.encoder.head) + count_parameters(unet.decoder.head) < 0.05 * unet.num_parameters()
    # encoder + decoder: the same order as ddpm's one U-Net (about 1.8x); the MLPs are about a third of it
    assert 1.0 < unet.num_parameters() / ddpm.num_parameters() < 2.5
    assert mlp.num_parameters() < 0.5 * ddpm.num_parameters()
    assert unet.backbone() == backbone_label("UNet", size, unet.num_parameters(), nets=2)
    assert mlp.backbone() == backbone_label("MLP", size, mlp.num_parameters(), nets=2)
    assert ddpm.backbone() == backbone_label("UNet", size, ddpm.num_parameters())
    assert ddpm.backbone().startswith(f"UNet({size}, ") and unet.backbone().endswith("M, 2 nets)")
    # Method.backbone's default, from the class names of the trained modules, agrees (ddpm's EMA copy is no net)
    from gmbench.method import Method

    assert Method.backbone(ddpm) == ddpm.backbone() and Method.backbone(mlp) == mlp.backbone()
    assert Method.backbone(unet) == backbone_label("UNetDecoder+UNetEncoder", size, unet.num_parameters(), nets=2)


@pytest.mark.parametrize("decoder_std", ["output", "shared"])
def test_unet_backbone_model_contract(decoder_std):
    from gmbench.evaluate import counted_nfe

    model = VAE(Digits().spec(), model_size="tiny", backbone="unet", decoder_std=decoder_std)
    assert set(model.modules()) >= {"encoder", "decoder"}
    x = Digits().split("test").x[:5]
    mu, log_var = model.encode(x.flatten(1))
    assert mu.shape == log_var.shape == (5, 16)
    # the decoder std starts at 1 everywhere, whatever z is (module doc), and the floor holds
    _, std = model.decode(torch.randn(7, 16, generator=gen(2)) * 3)
    assert std.shape == (7, 64)
    torch.testing.assert_close(std, torch.ones_like(std))
    with torch.no_grad():
        if decoder_std == "output":
            model.decoder.unet.out.bias[1:].fill_(-1e4)
        else:
            model.shared_std["raw"].fill_(-1e4)
    assert torch.all(model.decode(torch.zeros(3, 16))[1] == model.min_std)
    for sampler in ("prior", "mean"):
        s = model.sample(6, sampler, 1, gen(3))
        assert s.shape == (6, 1, 8, 8) and s.min() >= -1 and s.max() <= 1
        assert counted_nfe(model, sampler, 1, gen(4)) == 1  # one decoder pass, as declared
    model.iw_samples = 3
    ll = model.log_likelihood(x, gen(5))
    assert ll.shape == (5,) and torch.isfinite(ll).all()
