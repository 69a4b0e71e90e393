"""Small fake method plugins that exercise the contract's corners.

* ``GaussianFit``: one stage, one optimizer; learns a diagonal Gaussian by
  maximum likelihood (exact likelihood) — the smallest honest method.
* ``TinyGAN``: two optimizers stepped alternately through a generator-style
  ``training_step`` (discriminator first, generator second).
* ``TwoStage``: an "autoencoder" stage then a "latent" stage whose data is
  produced by ``on_stage_start`` with a counted matrix product.
* ``Broken*``: fault injection (exception, NaN loss, wrong sample shape).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.method import Method, OptimizerSpec, SamplerInfo, Stage


class GaussianFit(Method):
    name = "gaussfit"
    family = "test"
    paper = "0000.00000"
    modalities = ("toy2d", "image")
    samplers = (SamplerInfo("direct", adjustable_nfe=False, deterministic=False, default_nfe=1),)
    likelihood = "exact"

    def __init__(self, data, model_size="tiny"):
        super().__init__(data, model_size)
        d = data.dims
        self.net = nn.ParameterDict({"mu": nn.Parameter(torch.zeros(d)), "log_sigma": nn.Parameter(torch.zeros(d))})
        # a linear layer so the FLOP counter sees a matrix product each step
        self.proj = nn.Linear(d, d, bias=False)
        nn.init.eye_(self.proj.weight)
        self.proj.weight.requires_grad_(False)
        self.steps_seen = []

    def modules(self):
        return {"net": self.net, "proj": self.proj}

    def stages(self):
        return [Stage("fit", (OptimizerSpec("adam", ("net",), lr=5e-2),))]

    def _nll(self, x):
        x = self.proj(x.flatten(1))
        mu, ls = self.net["mu"], self.net["log_sigma"]
        return (0.5 * ((x - mu) / ls.exp()) ** 2 + ls + 0.5 * math.log(2 * math.pi)).sum(1)

    def training_step(self, stage, batch, step):
        self.steps_seen.append(step)
        return {"adam": self._nll(batch).mean()}

    def sample(self, n, sampler, nfe, generator):
        z = torch.randn(n, self.data.dims, generator=generator, device=self.device)
        x = self.net["mu"] + self.net["log_sigma"].exp() * z
        return x.reshape(n, *self.data.shape)

    def log_likelihood(self, x, generator):
        return -self._nll(x)


class TinyGAN(Method):
    name = "tinygan"
    family = "test"
    paper = "1406.2661"
    modalities = ("toy2d",)
    samplers = (SamplerInfo("direct", adjustable_nfe=False, default_nfe=1),)
    likelihood = "none"

    def __init__(self, data, model_size="tiny"):
        super().__init__(data, model_size)
        self.gen = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
        self.disc = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))
        self.order = []  # (optimizer, disc weight checksum when the loss was computed)

    def modules(self):
        return {"gen": self.gen, "disc": self.disc}

    def stages(self):
        return [Stage("adversarial", (OptimizerSpec("disc", ("disc",), lr=1e-3), OptimizerSpec("gen", ("gen",), lr=1e-3)))]

    def training_step(self, stage, batch, step):
        z = torch.randn(batch.shape[0], 2)
        fake = self.gen(z)
        bce = nn.functional.binary_cross_entropy_with_logits
        real_logit, fake_logit = self.disc(batch), self.disc(fake.detach())
        d_loss = bce(real_logit, torch.ones_like(real_logit)) + bce(fake_logit, torch.zeros_like(fake_logit))
        self.order.append(("disc", float(self.disc[0].weight.detach().sum())))
        yield "disc", d_loss
        # computed after the host stepped the discriminator: sees its new weights
        self.order.append(("gen", float(self.disc[0].weight.detach().sum())))
        g_logit = self.disc(self.gen(z))
        yield "gen", bce(g_logit, torch.ones_like(g_logit))

    def sample(self, n, sampler, nfe, generator):
        return self.gen(torch.randn(n, 2, generator=generator))


class TwoStage(Method):
    name = "twostage"
    family = "test"
    paper = "2112.10752"
    modalities = ("toy2d",)
    samplers = (SamplerInfo("direct", adjustable_nfe=False, default_nfe=1),)
    likelihood = "none"

    def __init__(self, data, model_size="tiny"):
        super().__init__(data, model_size)
        self.enc = nn.Linear(2, 2)
        self.prior = nn.Linear(2, 2)
        self.stage_data = {}
        self.stage_steps = {"autoencoder": 0, "latent": 0}

    def modules(self):
        return {"enc": self.enc, "prior": self.prior}

    def stages(self):
        return [
            Stage("autoencoder", (OptimizerSpec("ae", ("enc",), lr=1e-2),), budget_share=0.25),
            Stage("latent", (OptimizerSpec("prior", ("prior",), lr=1e-2),), budget_share=0.75),
        ]

    def on_stage_start(self, stage, train_x, generator):
        if stage == "latent":  # encode the whole training set: counted work inside training
            with torch.no_grad():
                z = self.enc(train_x)
            self.stage_data[stage] = z
            return z
        return None

    def training_step(self, stage, batch, step):
        self.stage_steps[stage] += 1
        if stage == "autoencoder":
            return {"ae": (self.enc(batch) - batch).pow(2).mean()}
        return {"prior": (self.prior(batch) - batch).pow(2).mean()}

    def sample(self, n, sampler, nfe, generator):
        return self.prior(torch.randn(n, 2, generator=generator))


class BrokenTrain(GaussianFit):
    name = "broken-train"

    def training_step(self, stage, batch, step):
        if step == 3:
            raise RuntimeError("injected failure in training_step")
        return super().training_step(stage, batch, step)


class NaNLoss(GaussianFit):
    name = "nan-loss"

    def training_step(self, stage, batch, step):
        loss = super().training_step(stage, batch, step)["adam"]
        return {"adam": loss * float("nan") if step >= 2 else loss}


class WrongShape(GaussianFit):
    name = "wrong-shape"

    def sample(self, n, sampler, nfe, generator):
        return torch.zeros(n, 3)


class NaNSamples(GaussianFit):
    name = "nan-samples"

    def sample(self, n, sampler, nfe, generator):
        return torch.full((n, *self.data.shape), float("nan"))


ALL = (GaussianFit, TinyGAN, TwoStage, BrokenTrain, NaNLoss, WrongShape, NaNSamples)


class FakePlugin:
    """Registers the given method classes (default: all fakes)."""

    def __init__(self, *classes):
        self.classes = classes or ALL

    @hookimpl
    def gmbench_register_methods(self, register):
        for cls in self.classes:
            register(cls)


# A budget small enough for the fakes: a few hundred steps, a second or two.
from gmbench.budget import Budget  # noqa: E402

TINY_BUDGET = Budget(
    name="tiny-test",
    train_flops={"toy2d": 1.0e6, "image": 4.0e6, "text": 4.0e6},
    batch_size={"toy2d": 64, "image": 32, "text": 16},
    wall_clock_s=30,
    model_size="tiny",
    eval_samples={"toy2d": 256, "image": 64, "text": 16},
    nfe_grid=(2, 4),
    eval_timeout_s=30,
    description="for tests of the host with fake methods",
)


class TinyBudgetPlugin:
    @hookimpl
    def gmbench_register_budgets(self, register):
        register(TINY_BUDGET)
