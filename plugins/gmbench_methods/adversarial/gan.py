"""GAN: Generative Adversarial Nets (Goodfellow et al. 2014, arXiv 1406.2661), with DCGAN
networks for images (Radford, Metz & Chintala 2015, arXiv 1511.06434) and the hinge and
WGAN-GP losses as options (Lim & Ye 2017, arXiv 1705.02894; Gulrajani et al. 2017,
arXiv 1704.00028).

The game (Eq. 1): ``min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]`` with
``z ~ N(0, I)``. ``D`` outputs a logit ``d``; ``D(x) = sigmoid(d)``. Losses per ``loss``:

* ``"nonsaturating"`` (default; the generator loss the paper recommends in Sec. 3, since
  ``log(1 - D(G(z)))`` saturates early in training):
  discriminator ``-log D(x) - log(1 - D(G(z))) = softplus(-d_real) + softplus(d_fake)``,
  generator ``-log D(G(z)) = softplus(-d_fake)``.
* ``"hinge"`` (Lim & Ye; the loss of SN-GAN, arXiv 1802.05957, and BigGAN):
  discriminator ``relu(1 - d_real) + relu(1 + d_fake)``, generator ``-d_fake``.
* ``"wgan-gp"`` (Gulrajani et al., Algorithm 1): critic
  ``d_fake - d_real + lambda (||grad_xhat D(xhat)||_2 - 1)^2`` with
  ``xhat = eps x + (1 - eps) G(z)``, ``eps ~ U[0, 1]`` per example, ``lambda = 10``;
  generator ``-d_fake``. The paper's defaults come with it: ``n_critic = 5`` critic steps
  per generator step and Adam(lr 1e-4, beta1 0, beta2 0.9); the critic has no batch
  normalisation (the penalty is per example), layer normalisation instead (Sec. 4).

Every expectation is a minibatch mean.

Training (Algorithm 1 of both papers): ``k`` discriminator updates, each on a fresh real
minibatch and fresh noise, then one generator update on fresh noise (``d_steps``, default 1,
5 for ``wgan-gp``). It uses the contract's generator form of ``training_step``: it yields
``("discriminator", loss)`` ``k`` times and then ``("generator", loss)``, and the host steps
each optimizer before the generator resumes, so every loss is computed from the parameters
the previous update left (the generator's loss sees the updated discriminator). One host
step is one generator update, so every step costs the same (the host's FLOP meter charges a
constant step cost and audits it). The fakes of a discriminator loss are drawn under
``no_grad`` and the discriminator's parameters are frozen while the generator's loss is
built: the gradients the host would discard anyway are never computed, which saves metered
work. Fresh real minibatches for ``k > 1``: the host hands one batch per step, so
``on_stage_start`` returns the training set as rows of ``k`` examples, ``[:, 0]`` the
data and ``[:, j]`` a seeded random permutation of it; a batch of rows then holds ``k``
minibatches, each drawn uniformly from the data like the host's own batches (memory: ``k``
copies of the training set).

Networks:

* toy2d: the shared :class:`gmbench.backbones.MLP` (``cond=False``) at the budget's preset
  for both ``G: z -> x`` and ``D: x -> d``.
* images: DCGAN scaled to small images. G projects ``z`` linearly to ``ngf 2^(k-1)``
  channels at ``H/2^k x W/2^k`` and then doubles the resolution ``k`` times with 4x4
  stride-2 transposed convolutions, halving the channels; batch normalisation and ReLU
  after every layer but the last, ``tanh`` output (the data lie in [-1, 1]). D mirrors it:
  4x4 stride-2 convolutions doubling the channels, LeakyReLU(0.2), batch normalisation on
  every layer but the first (layer normalisation, ``GroupNorm(1, C)``, for ``wgan-gp``),
  and a linear read-out of the last feature map. ``k`` is how often the image halves
  exactly down to at least 2x2, at most 4 (8x8 digits: 2 -> 4 -> 8; DCGAN's 64x64: 4 ->
  ... -> 64), no pooling anywhere. Weights start at ``N(0, 0.02)``, batch-norm scales at
  ``N(1, 0.02)`` (DCGAN Sec. 4). ``ngf = ndf`` is 96 / 144 / 256 / 512 at tiny / small /
  base / large, so that on 8x8 digits G and D together have about the parameters of
  ``ddpm``'s U-Net at the same preset (0.64M vs 0.63M at tiny, 1.41M vs 1.42M at small;
  4.3M vs 4.0M at base). On larger images the 4x4-kernel layers grow faster than the U-Net.

Optimiser for ``nonsaturating``/``hinge``: DCGAN's Adam(lr 2e-4, beta1 0.5) (Sec. 4; the
GAN paper used momentum SGD), on the toys too: measured on 8gaussians (sliced W2, seeds 0/1)
it beat 5e-4 and 1e-3 at both ``smoke`` and ``small`` (``docs/methods/gan.md``). The latent
size is not fixed by the papers: 8 on toy2d, 64 on images (DCGAN uses 100).

Sampler ``generator``: ``x = G(z)``, ``z ~ N(0, I)``, one generator call (NFE 1, not
adjustable; deterministic given ``z``). Networks are sampled in eval mode (batch-norm running
statistics), so a sample does not depend on the others in its batch. Likelihood: ``none``.

Option ``ema_decay`` (default None: off, as in the papers): sample from an exponential moving
average of the generator's weights (Yazici et al. 2018, arXiv 1806.04498; ProGAN, BigGAN),
decay ``min(ema_decay, (1 + k) / (10 + k))`` at step ``k`` as ``ddpm``'s EMA, batch-norm
statistics copied. The last iterate of a GAN oscillates (measured in ``docs/methods/gan.md``);
an average of the iterates damps it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from gmbench import hookimpl
from gmbench.data.base import DataSpec
from gmbench.ema import ema_update
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage, backbone_label

LOSSES = ("nonsaturating", "hinge", "wgan-gp")
#: (lr, beta1, beta2) when not given; wgan-gp: Gulrajani et al. Sec. 4 / Algorithm 1
DEFAULT_ADAM = {
    ("nonsaturating", "toy2d"): (2e-4, 0.5, 0.999),
    ("nonsaturating", "image"): (2e-4, 0.5, 0.999),
    ("hinge", "toy2d"): (2e-4, 0.5, 0.999),
    ("hinge", "image"): (2e-4, 0.5, 0.999),
    ("wgan-gp", "toy2d"): (1e-4, 0.0, 0.9),
    ("wgan-gp", "image"): (1e-4, 0.0, 0.9),
}
DEFAULT_LATENT = {"toy2d": 8, "image": 64}
#: DCGAN feature channels (ngf = ndf) per model-size preset
DCGAN_CHANNELS = {"tiny": 96, "small": 144, "base": 256, "large": 512}
MAX_UPSAMPLINGS = 4
LEAKY_SLOPE = 0.2
INIT_STD = 0.02


# -- losses ----------------------------------------------------------------------------------


def discriminator_loss(kind: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's (critic's) loss from its logits on real and generated examples,
    without the gradient penalty (see module doc for each ``kind``)."""
    if kind == "nonsaturating":
        # -log sigmoid(d) = softplus(-d); -log(1 - sigmoid(d)) = softplus(d)
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    if kind == "wgan-gp":
        return d_fake.mean() - d_real.mean()
    raise MethodError(f"gan: unknown loss {kind!r}; use one of {', '.join(LOSSES)}")


def generator_loss(kind: str, d_fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss from the discriminator's logits on its samples."""
    if kind == "nonsaturating":
        return F.softplus(-d_fake).mean()  # -log D(G(z))
    if kind in ("hinge", "wgan-gp"):
        return -d_fake.mean()
    raise MethodError(f"gan: unknown loss {kind!r}; use one of {', '.join(LOSSES)}")


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``mean_i (||grad_x D(xhat_i)||_2 - 1)^2`` at ``xhat = eps x + (1 - eps) x~`` (WGAN-GP Eq. 3),
    ``eps`` of shape ``(N,)``; differentiable in the critic's parameters (``create_graph``)."""
    e = eps.reshape(-1, *[1] * (real.dim() - 1))
    xhat = (e * real + (1 - e) * fake).detach().requires_grad_(True)
    # The critic reads a view of the leaf, not the leaf itself: under torch's FlopCounterMode
    # (module tracking) autograd.grad fails when a module's input is the very leaf it differentiates.
    (grad,) = torch.autograd.grad(critic(xhat.view_as(xhat)).sum(), xhat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()


# -- DCGAN networks ----------------------------------------------------------------------------


def dcgan_upsamplings(h: int, w: int) -> int:
    """How often both sides halve exactly while staying >= 2 (at most ``MAX_UPSAMPLINGS``)."""
    k = 0
    while k < MAX_UPSAMPLINGS and h % 2 == 0 and w % 2 == 0 and h // 2 >= 2 and w // 2 >= 2:
        h, w, k = h // 2, w // 2, k + 1
    return k


class DCGANGenerator(nn.Module):
    """``z (N, latent) -> image (N, C, H, W)`` in [-1, 1]: project, then ``k`` fractionally
    strided convolutions with batch norm and ReLU, ``tanh`` out (DCGAN Sec. 3, Fig. 1)."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        c, h, w = shape
        self.k = dcgan_upsamplings(h, w)
        if self.k == 0:
            raise MethodError(f"gan: image of {h}x{w} cannot be upsampled from a smaller grid (needs even sides >= 4)")
        self.start = (channels * 2 ** (self.k - 1), h // 2**self.k, w // 2**self.k)
        self.project = nn.Linear(latent_dim, self.start[0] * self.start[1] * self.start[2], bias=False)
        self.project_norm = nn.BatchNorm2d(self.start[0])
        layers: list[nn.Module] = []
        width = self.start[0]
        for i in range(self.k):
            last = i == self.k - 1
            out = c if last else width // 2
            layers.append(nn.ConvTranspose2d(width, out, 4, stride=2, padding=1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).reshape(-1, *self.start)
        return self.net(F.relu(self.project_norm(h)))


class DCGANDiscriminator(nn.Module):
    """``image -> logit (N,)``: ``k`` strided convolutions with LeakyReLU(0.2), a norm on all
    but the first (``"batch"``, DCGAN; ``"layer"``, WGAN-GP's critic), then a linear read-out."""

    def __init__(self, shape: tuple[int, int, int], channels: int, norm: str = "batch") -> None:
        super().__init__()
        c, h, w = shape
        k = dcgan_upsamplings(h, w)
        layers: list[nn.Module] = []
        width_in, width = c, channels
        for i in range(k):
            layers.append(nn.Conv2d(width_in, width, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(width) if norm == "batch" else nn.GroupNorm(1, width))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
            width_in, width = width, width * 2
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width_in * (h // 2**k) * (w // 2**k), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x).flatten(1)).squeeze(1)


class MLPDiscriminator(nn.Module):
    """The shared MLP as a critic: ``x (N, D) -> logit (N,)``."""

    def __init__(self, dims: int, size: str) -> None:
        super().__init__()
        from gmbench.backbones import MLP

        self.mlp = MLP(dims, 1, size=size, cond=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(1)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN Sec. 4: weights from N(0, 0.02); batch-norm scales from N(1, 0.02), shifts 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.bias)


# -- the method ---------------------------------------------------------------------------------


class GAN(Method):
    """Generative adversarial network (see module doc).

    Args:
        data: the dataset's spec (toy2d or image).
        model_size: network preset (shared MLP on toy2d, DCGAN width on images).
        loss: ``"nonsaturating"`` (Goodfellow et al.), ``"hinge"`` or ``"wgan-gp"``.
        d_steps: discriminator updates per generator update (``k`` of Algorithm 1);
            None: 1, or 5 for ``wgan-gp`` (``n_critic``).
        latent_dim: size of ``z``; None: 8 on toy2d, 64 on images.
        gp_weight: ``lambda`` of the gradient penalty (``wgan-gp`` only; paper: 10).
        lr: Adam learning rate of both players; None: see ``DEFAULT_ADAM``.
        beta1, beta2: Adam's betas; None: (0.5, 0.999) (DCGAN), (0, 0.9) for ``wgan-gp``.
        ema_decay: sample from an exponential moving average of the generator with this
            decay (e.g. 0.999); None or 0: the generator itself (the papers).
    """

    name = "gan"
    family = "adversarial"
    paper = "1406.2661"
    title = "Generative Adversarial Nets"
    modalities = ("toy2d", "image")
    samplers = (SamplerInfo("generator", adjustable_nfe=False, deterministic=True, default_nfe=1),)
    likelihood = "none"

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        loss: str = "nonsaturating",
        d_steps: int | None = None,
        latent_dim: int | None = None,
        gp_weight: float = 10.0,
        lr: float | None = None,
        beta1: float | None = None,
        beta2: float | None = None,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(data, model_size)
        if loss not in LOSSES:
            raise MethodError(f"gan: loss must be one of {', '.join(LOSSES)}, not {loss!r}")
        if d_steps is None:
            d_steps = 5 if loss == "wgan-gp" else 1
        if isinstance(d_steps, bool) or not isinstance(d_steps, int) or d_steps < 1:
            raise MethodError(f"gan: d_steps must be a positive integer, not {d_steps!r}")
        if latent_dim is not None and (isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1):
            raise MethodError(f"gan: latent_dim must be a positive integer, not {latent_dim!r}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise MethodError(f"gan: ema_decay must be in [0, 1) or None, not {ema_decay!r}")
        if not gp_weight >= 0:
            raise MethodError(f"gan: gp_weight must be >= 0, not {gp_weight!r}")
        self.loss, self.d_steps, self.gp_weight = loss, d_steps, float(gp_weight)
        self.latent_dim = latent_dim or DEFAULT_LATENT[data.modality]
        d_lr, d_b1, d_b2 = DEFAULT_ADAM[(loss, data.modality)]
        self.lr = d_lr if lr is None else float(lr)
        self.betas = (d_b1 if beta1 is None else float(beta1), d_b2 if beta2 is None else float(beta2))

        if data.modality == "toy2d":
            from gmbench.backbones import MLP

            self.generator: nn.Module = MLP(self.latent_dim, data.dims, size=model_size, cond=False)
            self.discriminator: nn.Module = MLPDiscriminator(data.dims, model_size)
            self.family_label = "MLP"
        else:
            from gmbench.backbones.sizes import check_size

            channels = DCGAN_CHANNELS[check_size(model_size)]
            shape = tuple(data.shape)
            self.generator = DCGANGenerator(self.latent_dim, shape, channels)
            self.discriminator = DCGANDiscriminator(shape, channels, norm="layer" if loss == "wgan-gp" else "batch")
            dcgan_init(self.generator)
            dcgan_init(self.discriminator)
            self.family_label = "DCGAN"
        self.ema_decay = float(ema_decay or 0.0)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False) if self.ema_decay else None

    def modules(self) -> dict[str, nn.Module]:
        mods = {"generator": self.generator, "discriminator": self.discriminator}
        if self.generator_ema is not None:  # a shadow copy no optimizer trains; moved and checkpointed
            mods["generator_ema"] = self.generator_ema
        return mods

    def num_parameters(self) -> int:
        return sum(p.numel() for m in (self.generator, self.discriminator) for p in m.parameters())

    def backbone(self) -> str:
        """``"MLP(tiny, 0.1M, 2 nets)"`` on toy2d, ``"DCGAN(tiny, 0.64M, 2 nets)"`` on images."""
        return backbone_label(self.family_label, self.model_size, self.num_parameters(), nets=2)

    # -- training ------------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        return [Stage("adversarial", (
            OptimizerSpec("discriminator", ("discriminator",), lr=self.lr, betas=self.betas),
            OptimizerSpec("generator", ("generator",), lr=self.lr, betas=self.betas),
        ))]

    @torch.no_grad()
    def on_stage_start(self, stage: str, train_x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """For ``d_steps = k > 1``: rows of ``k`` training examples (module doc), else nothing."""
        if self.d_steps == 1:
            return None
        n = train_x.shape[0]
        cols = [train_x] + [train_x[torch.randperm(n, generator=generator).to(train_x.device)] for _ in range(self.d_steps - 1)]
        return torch.stack(cols, dim=1)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=self.device)  # torch's RNG, seeded by the host

    def _real_minibatches(self, batch: torch.Tensor) -> list[torch.Tensor]:
        if self.d_steps == 1:
            return [batch]
        if batch.dim() != len(self.data.shape) + 2 or batch.shape[1] != self.d_steps:
            raise MethodError(f"gan: expected batches of rows of {self.d_steps} examples, got shape {tuple(batch.shape)}")
        return list(batch.unbind(1))

    def discriminator_step_loss(self, real: torch.Tensor) -> torch.Tensor:
        """One discriminator (critic) loss on a real minibatch and as many fresh fakes."""
        with torch.no_grad():
            fake = self.generator(self._noise(real.shape[0]))
        d = self.discriminator
        loss = discriminator_loss(self.loss, d(real), d(fake))
        if self.loss == "wgan-gp" and self.gp_weight:
            eps = torch.rand(real.shape[0], device=real.device)
            loss = loss + self.gp_weight * gradient_penalty(d, real, fake, eps)
        return loss

    def generator_step_loss(self, n: int) -> torch.Tensor:
        """The generator's loss on ``n`` fresh samples, through the current discriminator
        (its parameters frozen while the graph is built: their gradients would be discarded)."""
        fake = self.generator(self._noise(n))
        flags = [p.requires_grad for p in self.discriminator.parameters()]
        self.discriminator.requires_grad_(False)
        try:
            return generator_loss(self.loss, self.discriminator(fake))
        finally:
            for p, flag in zip(self.discriminator.parameters(), flags):
                p.requires_grad_(flag)

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        reals = self._real_minibatches(batch)
        for real in reals:  # k discriminator updates, each stepped by the host before the next loss
            yield "discriminator", self.discriminator_step_loss(real)
        yield "generator", self.generator_step_loss(reals[0].shape[0])

    @torch.no_grad()
    def on_step_end(self, stage: str, step: int) -> None:
        if self.generator_ema is None:
            return
        ema_update(self.generator_ema, self.generator, self.ema_decay, step)
        for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            b_ema.copy_(b)

    # -- sampling ----------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        self.sampler(sampler)  # unknown names fail with a suggestion
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device).to(self.device)
        x = (self.generator_ema if self.generator_ema is not None else self.generator)(z)
        if self.data.modality == "image" and self.data.value_range is not None:
            x = x.clamp(*self.data.value_range)
        return x.reshape(n, *self.data.shape)


@hookimpl
def gmbench_register_methods(register):
    register(GAN)


@hookimpl
def gmbench_register_claims(register):
    """GANs trade recall for precision: sharp samples that miss part of the data, where a
    likelihood-trained diffusion model covers it (the survey's ordering, cf. Kynkaanniemi et al.
    arXiv 1904.06991 on precision/recall of GANs). Compared at equal training FLOPs with ddpm's
    50-step sampler (in the smoke and small NFE grids): DDIM on digits (its better image
    sampler), ancestral on the toys (its better toy sampler, docs/parity.md)."""
    from gmbench.claims import Cell, PaperClaim

    gan, ddim, ancestral = Cell("gan", "generator", 1), Cell("ddpm", "ddim", 50), Cell("ddpm", "ancestral", 50)
    register(PaperClaim(
        name="gan-precision-above-ddpm-digits", relation="better", metric="precision", dataset="digits",
        a=gan, b=ddim, paper="1406.2661", table="GAN Sec. 6 / survey ordering (sharp samples)",
        statement="GAN samples have higher precision than DDPM's DDIM-50 samples at equal training FLOPs",
    ))
    register(PaperClaim(
        name="ddpm-recall-above-gan-digits", relation="better", metric="recall", dataset="digits",
        a=ddim, b=gan, paper="1406.2661", table="GAN Sec. 6 / survey ordering (mode dropping)",
        statement="DDPM's DDIM-50 samples have higher recall than GAN samples at equal training FLOPs",
    ))
    register(PaperClaim(
        name="ddpm-covers-more-modes-than-gan-8gaussians", relation="better", metric="mode_coverage",
        dataset="8gaussians", a=ancestral, b=gan, paper="1406.2661", table="GAN Sec. 6 (the Helvetica scenario)",
        statement="DDPM's ancestral-50 samples cover more of the 8 modes than GAN samples at equal training FLOPs",
    ))
