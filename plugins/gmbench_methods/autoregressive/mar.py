"""MAR: Autoregressive Image Generation without Vector Quantization (Li, Tian, Li, Deng & He
2024, arXiv 2406.11838): a masked autoregressive transformer over *continuous* tokens whose
per-token distribution is a small diffusion model (the "diffusion loss").

Tokens. An image ``(C, H, W)`` is cut into ``L = (H/p)(W/p)`` non-overlapping ``p x p``
patches (``patch_size`` p, default 2), each a continuous token of ``d = C p^2`` values in the
data's range, in raster order (digits 8x8x1, p = 2: 16 tokens of 4 values). The paper's
tokens are a KL-autoencoder's latents; pixel patches are its "tokens need not be discrete"
point at this scale. ``tokens="dc-ae"`` instead patchifies the latent of a DC-AE
(``gmbench_methods.autoencoders.dc_ae``, arXiv 2410.10733; spatial factor ``ae_f``, default
2: digits -> a 1x4x4 latent, so ``patch_size=1`` gives 16 one-value tokens) trained in a first
stage (``ae_share`` of the budget, default 0.3, DC-AE's own L1 reconstruction loss); at the
start of the MAR stage the training images are encoded once and the latents scaled by
``1 / sigma_hat`` (their standard deviation, as LDM's scale factor, arXiv 2112.10752), and
samples are decoded by one decoder call per batch.

Masked autoregression (section 3.2-3.3). A generation order ``pi`` (a permutation of the
``L`` positions) factorises ``p(x_1..x_L) = prod_k p(X^k | X^1..X^{k-1})``, where ``X^k`` is the
set of tokens generated at step ``k`` of ``K``. ``order="random"`` draws ``pi`` uniformly per
image (the paper), ``order="raster"`` takes the identity (its ablation, MAR T1). The network
is a bidirectional transformer (gmbench's shared ``Transformer`` blocks, no causal mask)
over all ``L`` positions: a known token enters as ``W_in x_i + e_i``, an unknown one as a
learned mask embedding ``m + e_i`` (``e_i`` a learned absolute position embedding; the
backbone also rotates queries and keys by the raster index, RoPE). Its output plus a second
learned position embedding (the released code's ``diffusion_pos_embed_learned``), ``z_i``,
at each unknown position conditions that token's distribution ``p(x_i | z_i)``.

Training masks (the released code, which follows MAGE): one mask ratio per batch,
``r ~ N(1, 0.25^2)`` truncated to ``[0.7, 1]`` (``mask_schedule="truncnorm"``, default), drawn by
inverting the CDF, ``r = 1 + 0.25 Phi^{-1}(Phi(-1.2) + u (Phi(0) - Phi(-1.2)))``, ``u ~ U(0, 1)``;
``m = ceil(r L)`` tokens are masked: the last ``m`` of each image's order ``pi``, the first
``L - m`` are known. ``mask_schedule="cosine"`` draws ``r = cos(pi u / 2)`` instead (MaskGIT's
training schedule, arXiv 2202.04200). The loss is taken on the masked tokens only.

Generation (section 3.3, Algorithm of the released code): after step ``k`` of ``K``,
``m_k = max(1, min(m_{k-1} - 1, floor(L cos(pi k / (2K)))))`` tokens stay masked (``m_0 = L``,
``m_K = 0``), so step ``k`` generates ``n_k = m_{k-1} - m_k`` tokens, the next ones in ``pi``:
few tokens early, many late (the cosine schedule), at least one per step while ``K <= L``.
For ``K > L`` the rule keeps one token masked until the last step, so some steps generate
nothing: those steps make no network call (a sample costs at most ``min(K, L)`` steps).

Per-token loss (section 3.1-3.2, ``loss="diffusion"``): see :mod:`.diffloss`:
``L(z, x) = E_{eps,t} ||eps - eps_theta(sqrt(abar_t) x + sqrt(1 - abar_t) eps | t, z)||^2``,
cosine ``abar`` over ``T = 1000`` steps, ``diffusion_batch_mul`` draws of ``(t, eps)`` per
masked token (released code: 4; default 1 here, because at this scale four draws through the
head cost about 3x the tiny transformer's FLOPs per token (0.8x per draw), where MAR-B's cost
about half its transformer's, so under a FLOP budget the repeats buy fewer optimizer steps: measured on digits at ``smoke``, sliced W2 of 256 samples
to the test set 0.16 with 4 repeats (121 steps) vs 0.13 with 1 (267 steps)). Sampling a
token runs ``S`` ancestral DDPM steps of the head with temperature ``tau`` on the noise term.

Cross-entropy ablation (MAR T1, ``loss="ce"``): the paper's counterpart quantises tokens
with a VQ tokenizer and predicts the code index with a softmax. Here each patch is
quantised to its nearest code of a ``codebook_size``-entry (default 256) k-means codebook
fitted at the start of training on the training patches (Lloyd's algorithm, 20
iterations, seeded, FLOPs metered against the budget); the transformer sees the quantised
tokens, a linear head maps ``z_i`` to logits over codes, the loss is the cross-entropy of
the true code, and sampling draws ``softmax(logits / tau)``.

Samplers and NFE. NFE is ``K``, the number of autoregressive steps (adjustable). Each step
runs the transformer once and the per-token head ``S`` times (all tokens of that step
batched in one head call per diffusion step), so the named samplers carry ``S`` and ``tau``
in ``SamplerInfo.params`` and declare ``calls_per_step = 1 + S``: the host's audit, which
counts forward calls of every module ``modules()`` returns (transformer and head
separately), then checks both networks. ``ddpm`` is the paper's 100 steps per token,
``ddpm-s20`` a CPU-cheaper 20 (a head call is ~0.16 MFLOP per token at ``tiny``); ``tau = 1``. With ``loss="ce"`` the one
sampler is ``categorical`` (``calls_per_step = 2``: transformer and linear head). With
``tokens="dc-ae"`` each sampler declares one more call per step for the decoder, which runs
once per ``sample`` call (an upper bound; the host records the count that ran).

Deviations (CPU scale): a single bidirectional transformer with mask tokens (MaskGIT-
style) instead of the paper's MAE-style encoder (known tokens and 64 buffer tokens) plus
decoder (mask tokens): with 16 tokens the encoder's saving is nil; the head learns
only the mean (epsilon), not the variance (see :mod:`.diffloss`); widths follow the
``model_size`` preset (head: 3 blocks of the transformer's width). EMA of both networks
(paper: 0.9999) with the warm-up ``min(decay, (1 + k)/(10 + k))`` used by gmbench's ddpm.
Likelihood: ``none`` (the paper reports none).

Class conditioning (``class_cond=True`` on a labelled dataset; default off, the boards' ``mar``
is unconditional like the methods it is ranked with). The paper's ImageNet models condition on
the class through class-embedding tokens in the encoder's buffer and sample with
classifier-free guidance (Ho & Salimans, arXiv 2207.12598). Here a learned class embedding is
added at every position of the transformer's input (with one bidirectional transformer and no
buffer tokens, the same information reaches every position); training replaces a label by
the null class with probability ``p_uncond`` (0.1, the released code's label drop). The host
passes the labels and chooses the classes of the samples (``gmbench.conditioning``). The
``ddpm`` / ``ddpm-s20`` samplers then sample given the class; ``ddpm-s20-cfg`` guides each
head step, ``eps = eps(x|z_u) + w_k (eps(x|z_c) - eps(x|z_u))`` with ``z_c`` / ``z_u`` the
transformer's outputs for the class and the null class (two transformer calls and two head
calls per diffusion step, declared and counted), and the paper's linear schedule
``w_k = 1 + (w - 1) (L - m_{k-1}) / L`` (tokens known before step ``k``; the released code's
``cfg_schedule="linear"``) up to ``w = guidance`` (1.5 here, as ``ldm``'s, untuned; the paper
tunes 2.9 for MAR-B on ImageNet).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from gmbench import hookimpl
from gmbench.backbones import Transformer, size_config
from gmbench.conditioning import guidance_options
from gmbench.data.base import DataSpec
from gmbench.ema import ema_update
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage, backbone_label
from gmbench_methods.diffusion.schedules import NoiseSchedule

from .diffloss import DiffusionHead, diffusion_loss, sample_tokens

ORDERS = ("random", "raster")
LOSSES = ("diffusion", "ce")
MASK_SCHEDULES = ("truncnorm", "cosine")
MASK_RATIO_MIN, MASK_RATIO_STD = 0.7, 0.25  # the released code's truncated Gaussian
KMEANS_ITERS = 20


# -- tokens ---------------------------------------------------------------------------------


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, L, C p^2)``: ``p x p`` patches in raster order."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, shape: tuple[int, int, int], p: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for images of ``shape = (C, H, W)``."""
    c, h, w = shape
    n = tokens.shape[0]
    x = tokens.reshape(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, c, h, w)


# -- masking schedules ------------------------------------------------------------------------


def truncnorm_mask_ratio(u: torch.Tensor, low: float = MASK_RATIO_MIN, std: float = MASK_RATIO_STD) -> torch.Tensor:
    """``N(1, std^2)`` truncated to ``[low, 1]`` at quantiles ``u`` in [0, 1] (inverse CDF)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    a = torch.special.ndtr(torch.tensor((low - 1.0) / std, dtype=torch.float64))
    b = torch.special.ndtr(torch.tensor(0.0, dtype=torch.float64))
    return (1.0 + std * torch.special.ndtri(a + u * (b - a))).clamp(low, 1.0)


def cosine_mask_ratio(u: torch.Tensor) -> torch.Tensor:
    """MaskGIT's training ratio ``cos(pi u / 2)`` for ``u ~ U(0, 1)``."""
    return torch.cos(math.pi / 2 * torch.as_tensor(u, dtype=torch.float64))


def masked_counts(L: int, K: int) -> list[int]:
    """``m_0 = L, m_1, ..., m_K = 0``: tokens still masked after each generation step (module doc)."""
    if K < 1 or L < 1:
        raise ValueError(f"need K >= 1 and L >= 1, got K={K}, L={L}")
    m = [L]
    for k in range(1, K):
        m.append(max(1, min(m[-1] - 1, math.floor(L * math.cos(math.pi / 2 * k / K)))))
    return m + [0]


def tokens_per_step(L: int, K: int) -> list[int]:
    """``n_k = m_{k-1} - m_k``, the tokens generated at steps ``1..K`` (they sum to ``L``)."""
    m = masked_counts(L, K)
    return [m[k - 1] - m[k] for k in range(1, K + 1)]


def generation_order(n: int, L: int, order: str, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, L)`` generation orders: a uniform random permutation per row, or the identity."""
    if order == "raster":
        return torch.arange(L, device=device).expand(n, L).clone()
    gdev = generator.device if generator is not None else "cpu"
    keys = torch.rand((n, L), generator=generator, device=gdev)
    return keys.argsort(dim=1).to(device)


# -- networks -----------------------------------------------------------------------------------


class MARTransformer(nn.Module):
    """Bidirectional transformer over continuous tokens: ``(tokens (N, L, d), known (N, L))``
    -> ``z`` of shape ``(N, L, cond_dim)``. The blocks, final norm and output layer are
    gmbench's shared :class:`~gmbench.backbones.Transformer` (non-causal, rotary positions);
    its token-id embedding is replaced by a linear map of the token plus a learned absolute
    position embedding, with a learned mask embedding at unknown positions. A second
    learned position embedding is added to the output ``z`` (the released code's
    ``diffusion_pos_embed_learned``), so the head sees each token's position directly."""

    def __init__(self, token_dim: int, seq_len: int, cond_dim: int, size: str, num_classes: int | None = None) -> None:
        super().__init__()
        self.backbone = Transformer(1, seq_len, out_dim=cond_dim, size=size, causal=False, cond=False)
        del self.backbone.tok  # inputs are continuous: embedded here instead
        width = self.backbone.out.in_features
        self.inp = nn.Linear(token_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.pos = nn.Parameter(torch.zeros(seq_len, width))
        self.pos_out = nn.Parameter(torch.zeros(seq_len, cond_dim))
        for p in (self.mask_token, self.pos, self.pos_out):
            nn.init.normal_(p, std=0.02)
        # class conditioning: one row per class and a last, null row (classifier-free guidance)
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, known: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        bb, L = self.backbone, tokens.shape[1]
        h = torch.where(known[..., None], self.inp(tokens), self.mask_token.to(tokens.dtype)) + self.pos[:L]
        if self.class_embed is not None:
            h = h + self.class_embed(classes)[:, None, :].to(h.dtype)
        h = bb.drop(h)
        rope = (bb.rope_cos[:L], bb.rope_sin[:L])
        for block in bb.blocks:
            h = block(h, None, None, rope)
        return bb.out(bb.norm_out(h)) + self.pos_out[:L]


class CEHead(nn.Module):
    """The cross-entropy ablation's head: logits over a k-means codebook (a buffer, fitted
    in ``on_stage_start`` and saved with the checkpoint) from ``z``."""

    def __init__(self, cond_dim: int, token_dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("codebook", torch.zeros(codebook_size, token_dim))
        self.out = nn.Linear(cond_dim, codebook_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(z)

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of each row of ``x`` (M, d)."""
        return torch.cdist(x, self.codebook).argmin(dim=1)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's algorithm on rows of ``x``; initial centres are ``k`` distinct random rows."""
    idx = torch.randperm(x.shape[0], generator=generator, device=generator.device)[:k].to(x.device)
    centres = x[idx].clone()
    if centres.shape[0] < k:  # fewer points than codes: repeat them
        centres = centres[torch.arange(k, device=x.device) % centres.shape[0]]
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0  # an empty cluster keeps its centre
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


# -- the method ---------------------------------------------------------------------------------


DIFFUSION_SAMPLERS = (
    SamplerInfo("ddpm", adjustable_nfe=True, deterministic=False, default_nfe=8, calls_per_step=101,
                params={"diffusion_steps": 100, "temperature": 1.0}),
    SamplerInfo("ddpm-s20", adjustable_nfe=True, deterministic=False, default_nfe=8, calls_per_step=21,
                params={"diffusion_steps": 20, "temperature": 1.0}),
)
CE_SAMPLERS = (
    SamplerInfo("categorical", adjustable_nfe=True, deterministic=False, default_nfe=8, calls_per_step=2,
                params={"temperature": 1.0}),
)
# tokens="dc-ae": one decoder call per sample on top, declared as one more call per step
LATENT_DIFFUSION_SAMPLERS = tuple(dataclasses.replace(s, calls_per_step=s.calls_per_step + 1) for s in DIFFUSION_SAMPLERS)
LATENT_CE_SAMPLERS = tuple(dataclasses.replace(s, calls_per_step=s.calls_per_step + 1) for s in CE_SAMPLERS)
TOKEN_SOURCES = ("patches", "dc-ae")


# classifier-free guidance (module doc): the released code's label drop, and a scale
DEFAULT_P_UNCOND = 0.1
DEFAULT_GUIDANCE = 1.5


def conditional_samplers(samplers: tuple[SamplerInfo, ...], guidance: float) -> tuple[SamplerInfo, ...]:
    """A conditional model's samplers: each given the class (guidance 1), and for the diffusion
    loss ``ddpm-s20-cfg``, guided: twice the transformer and head calls of ``ddpm-s20``."""
    out = tuple(dataclasses.replace(s, params={**s.params, "guidance": 1.0}) for s in samplers)
    base = next((s for s in out if s.name == "ddpm-s20"), None)
    if base is None:  # the cross-entropy ablation: no guided sampler
        return out
    return out + (dataclasses.replace(base, name="ddpm-s20-cfg", calls_per_step=2 * base.calls_per_step,
                                      params={**base.params, "guidance": guidance}),)


class GuidedHead(nn.Module):
    """The diffusion head under classifier-free guidance for one generation step:
    ``eps(x|z_u) + w (eps(x|z_c) - eps(x|z_u))`` with ``z_u`` (the null class's transformer
    output) fixed, ``z_c`` passed as usual. Two calls of the wrapped head, each counted."""

    def __init__(self, head: nn.Module, z_uncond: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.head, self.z_uncond, self.scale = head, z_uncond, scale

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cond = self.head(x, t, z)
        uncond = self.head(x, t, self.z_uncond)
        return uncond + self.scale * (cond - uncond)


class LatentScale(nn.Module):
    """The latent scale ``1 / sigma_hat`` (a buffer, so checkpoints carry it); never called."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))


class MAR(Method):
    """Masked autoregressive model over continuous patch tokens with the per-token diffusion
    loss (module docstring).

    Args:
        data: an image dataset's spec.
        model_size: transformer preset; the head has the transformer's width.
        patch_size: side ``p`` of the square patches (tokens of ``C p^2`` values); must divide H and W.
        order: generation order, ``"random"`` (paper) or ``"raster"`` (ablation).
        loss: ``"diffusion"`` (paper) or ``"ce"`` (cross-entropy over k-means-quantised tokens, ablation).
        mask_schedule: training mask ratio, ``"truncnorm"`` (released code: N(1, 0.25^2) on
            [0.7, 1]) or ``"cosine"`` (MaskGIT's ``cos(pi u / 2)``; on digits at ``smoke``
            sliced W2 0.14 vs truncnorm's 0.16, with 4 loss repeats).
        head_depth: residual blocks of the diffusion head (paper: 3).
        diffusion_batch_mul: ``(t, eps)`` draws per masked token in the loss (released code: 4).
        T: diffusion steps of the head's training schedule (paper: 1000, cosine).
        codebook_size: k-means codes for ``loss="ce"``.
        clip_denoised: clip each step's predicted token to the data range (pixel tokens).
        lr, grad_clip: Adam settings, betas (0.9, 0.95) (released code: AdamW, lr 8e-4 at
            batch 2048, clip 3.0). 3e-3 here at batch 64, where small budgets take a few
            hundred steps: digits ``smoke``, sliced W2 0.23 at 1e-3, 0.16 at 3e-3.
        ema_decay: EMA of both networks used for sampling (paper: 0.9999); 0/None: off.
        tokens: ``"patches"`` (pixel patches) or ``"dc-ae"`` (patches of a DC-AE latent
            trained in a first stage; then ``patch_size`` must divide the latent's side).
        ae_f, ae_latent_channels: the DC-AE's spatial factor and latent channels (``dc-ae``'s
            ``f`` and ``latent_channels``).
        ae_share: share of the budget for the DC-AE stage (``tokens="dc-ae"``).
        class_cond: train and sample given the dataset's labels (module doc); needs labels.
        p_uncond: probability a training label is replaced by the null class (``class_cond``; 0.1).
        guidance: final guidance scale of ``ddpm-s20-cfg`` (``class_cond``; 1.5; 1 = none).
    """

    name = "mar"
    family = "autoregressive"
    paper = "2406.11838"
    title = "Autoregressive Image Generation without Vector Quantization"
    modalities = ("image",)
    samplers = DIFFUSION_SAMPLERS
    likelihood = "none"

    def __init__(
        self,
        data: DataSpec,
        model_size: str = "small",
        patch_size: int = 2,
        order: str = "random",
        loss: str = "diffusion",
        mask_schedule: str = "truncnorm",
        head_depth: int = 3,
        diffusion_batch_mul: int = 1,
        T: int = 1000,
        codebook_size: int = 256,
        clip_denoised: bool = True,
        lr: float = 3e-3,
        grad_clip: float | None = 3.0,
        ema_decay: float | None = 0.9999,
        tokens: str = "patches",
        ae_f: int = 2,
        ae_latent_channels: int | str = "auto",
        ae_share: float = 0.3,
        class_cond: bool = False,
        p_uncond: float | None = None,
        guidance: float | None = None,
    ) -> None:
        super().__init__(data, model_size)  # toy2d / text: MethodError naming the supported modality
        if order not in ORDERS:
            raise ValueError(f"mar: order must be one of {ORDERS}, got {order!r}")
        if loss not in LOSSES:
            raise ValueError(f"mar: loss must be one of {LOSSES}, got {loss!r}")
        if mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mar: mask_schedule must be one of {MASK_SCHEDULES}, got {mask_schedule!r}")
        if tokens not in TOKEN_SOURCES:
            raise ValueError(f"mar: tokens must be one of {TOKEN_SOURCES}, got {tokens!r}")
        self.tokens, self.ae, self.latent_scale = tokens, None, None
        if tokens == "dc-ae":
            from gmbench_methods.autoencoders.dc_ae import DCAE

            if not 0.0 < float(ae_share) < 1.0:
                raise ValueError(f"mar: ae_share must be in (0, 1), got {ae_share!r}")
            self.ae = DCAE(data, model_size, f=ae_f, latent_channels=ae_latent_channels)
            self.ae_share = float(ae_share)
            self.latent_scale = LatentScale()
            self.token_shape = tuple(self.ae.latent_shape)
            clip_denoised = False  # latents have no fixed range
        else:
            self.token_shape = tuple(data.shape)
        c, h, w = self.token_shape
        if not (isinstance(patch_size, int) and patch_size >= 1 and h % patch_size == 0 and w % patch_size == 0):
            what = "the latent size" if self.ae is not None else "the image size"
            raise MethodError(f"mar: patch_size must be a positive integer dividing {what} {h}x{w}, got {patch_size!r}")
        if int(diffusion_batch_mul) < 1 or int(head_depth) < 1 or int(codebook_size) < 2:
            raise ValueError("mar: diffusion_batch_mul and head_depth must be >= 1, codebook_size >= 2")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"mar: ema_decay must be in [0, 1) or None, got {ema_decay!r}")
        self.p, self.order, self.loss, self.mask_schedule = patch_size, order, loss, mask_schedule
        self.L = (h // patch_size) * (w // patch_size)
        self.d = c * patch_size**2
        self.mul, self.lr, self.grad_clip = int(diffusion_batch_mul), float(lr), grad_clip
        self.ema_decay = ema_decay or 0.0
        self.clip = data.value_range if clip_denoised else None
        self.schedule = NoiseSchedule.cosine(T)
        width = size_config("transformer", model_size)["width"]
        self._set_conditioning(data, class_cond, p_uncond, guidance)
        self.net = MARTransformer(self.d, self.L, width, model_size, data.num_classes if class_cond else None)
        if loss == "diffusion":
            self.head: nn.Module = DiffusionHead(self.d, width, width, int(head_depth), T)
        else:
            self.head = CEHead(width, self.d, int(codebook_size))
            self.samplers = CE_SAMPLERS
        if self.ae is not None:
            self.samplers = LATENT_CE_SAMPLERS if loss == "ce" else LATENT_DIFFUSION_SAMPLERS
        if class_cond:
            self.samplers = conditional_samplers(self.samplers, self.guidance)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False) if self.ema_decay else None
        self.ema_head = copy.deepcopy(self.head).requires_grad_(False) if self.ema_decay else None

    def _set_conditioning(self, data: DataSpec, class_cond, p_uncond, guidance) -> None:
        """Check and keep the class-conditioning options (module doc)."""
        options = guidance_options("mar", data, class_cond, p_uncond, guidance, DEFAULT_P_UNCOND, DEFAULT_GUIDANCE)
        if options is not None:
            self.class_conditional = True
            self.p_uncond, self.guidance = options
            self.null_class = data.num_classes

    # -- networks ---------------------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        out = {"net": self.net, "head": self.head}
        if self.ema_net is not None:
            out.update(ema_net=self.ema_net, ema_head=self.ema_head)
        if self.ae is not None:  # the prior and the scale hold buffers only; no optimizer names them
            out.update(ae_encoder=self.ae.encoder, ae_decoder=self.ae.decoder, ae_prior=self.ae.prior,
                       latent_scale=self.latent_scale)
        return out

    def _trained(self) -> list[nn.Module]:
        return [self.net, self.head] + ([self.ae.encoder, self.ae.decoder] if self.ae is not None else [])

    def num_parameters(self) -> int:
        return sum(p.numel() for m in self._trained() for p in m.parameters())

    def backbone(self) -> str:
        """``"Transformer+MLP(tiny, 0.2M, 2 nets)"``: the shared transformer and the head
        (``"DC-AE+Transformer+MLP(..., 4 nets)"`` with the autoencoder's encoder and decoder)."""
        head = "MLP" if self.loss == "diffusion" else "Linear"
        family = f"Transformer+{head}" if self.ae is None else f"DC-AE+Transformer+{head}"
        return backbone_label(family, self.model_size, self.num_parameters(), len(self._trained()))

    def to(self, device: torch.device | str) -> "MAR":
        super().to(device)
        self.schedule.to(self.device)
        if self.ae is not None:
            self.ae.device = self.device
        return self

    # -- training ---------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        opt = OptimizerSpec("adam", ("net", "head"), lr=self.lr, betas=(0.9, 0.95), grad_clip=self.grad_clip)
        if self.ae is None:
            return [Stage("mar", (opt,))]
        ae = OptimizerSpec("ae", ("ae_encoder", "ae_decoder"), lr=self.ae.lr)
        return [Stage("autoencoder", (ae,), self.ae_share), Stage("mar", (opt,), 1.0 - self.ae_share)]

    @torch.no_grad()
    def on_stage_start(self, stage: str, train_x: torch.Tensor, generator: torch.Generator):
        if stage != "mar":
            return None
        x, out = train_x.to(self.device).float(), None
        if self.ae is not None:  # encode the training set once; scale by 1 / sigma_hat (as LDM)
            z = torch.cat([self.ae.encode(x[i:i + 512]) for i in range(0, len(x), 512)])
            self.latent_scale.scale.fill_(1.0 / float(z.std().clamp_min(1e-8)))
            x = out = z * self.latent_scale.scale
        if self.loss == "ce":  # fit the k-means codebook on the training tokens
            centres = kmeans(patchify(x, self.p).reshape(-1, self.d), self.head.codebook.shape[0], KMEANS_ITERS, generator)
            for head in (self.head, self.ema_head):
                if head is not None:
                    head.codebook.copy_(centres)
        return out

    def mask_ratio(self, u: torch.Tensor) -> torch.Tensor:
        return truncnorm_mask_ratio(u) if self.mask_schedule == "truncnorm" else cosine_mask_ratio(u)

    def training_step(self, stage: str, batch: torch.Tensor, step: int, labels: torch.Tensor | None = None):
        if stage == "autoencoder":  # DC-AE's stage 1 (its pixel loss and latent moments)
            return {"ae": self.ae.training_step(stage, batch, step)["adam"]}
        x = patchify(batch, self.p)  # (N, L, d)
        n = x.shape[0]
        if self.loss == "ce":
            codes = self.head.quantise(x.reshape(-1, self.d)).reshape(n, self.L)
            x = self.head.codebook[codes]
        ratio = float(self.mask_ratio(torch.rand(())))
        m = min(self.L, max(1, math.ceil(ratio * self.L)))  # masked: the last m of each order
        order = generation_order(n, self.L, self.order, device=x.device)
        masked = order[:, self.L - m:]
        known = torch.ones(n, self.L, dtype=torch.bool, device=x.device).scatter(1, masked, False)
        classes = None
        if self.class_conditional:  # labels dropped to the null class for classifier-free guidance
            drop = torch.rand(labels.shape, device=labels.device) < self.p_uncond
            classes = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        z = self.net(x, known, classes) if classes is not None else self.net(x, known)
        z_m = z.gather(1, masked[..., None].expand(-1, -1, z.shape[-1])).reshape(n * m, -1)
        if self.loss == "ce":
            target = codes.gather(1, masked).reshape(-1)
            return {"adam": F.cross_entropy(self.head(z_m), target)}
        x_m = x.gather(1, masked[..., None].expand(-1, -1, self.d)).reshape(n * m, self.d)
        return {"adam": diffusion_loss(self.head, self.schedule, x_m, z_m, self.mul)}

    @torch.no_grad()
    def on_step_end(self, stage: str, step: int) -> None:
        if not self.ema_decay or stage != "mar":
            return
        for ema, live in ((self.ema_net, self.net), (self.ema_head, self.head)):
            ema_update(ema, live, self.ema_decay, step)

    # -- sampling ---------------------------------------------------------------------------

    def sampling_nets(self) -> tuple[nn.Module, nn.Module]:
        return (self.ema_net, self.ema_head) if self.ema_decay else (self.net, self.head)

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator,
               classes: torch.Tensor | None = None) -> torch.Tensor:
        params = self.sampler(sampler).params
        if isinstance(nfe, bool) or int(nfe) != nfe or nfe < 1:
            raise MethodError(f"mar: nfe (autoregressive steps) must be a positive integer, got {nfe!r}")
        if self.class_conditional and (classes is None or classes.shape != (n,)):
            raise MethodError(f"mar: a class-conditional model samples given classes of shape ({n},), "
                              f"got {None if classes is None else tuple(classes.shape)}")
        net, head = self.sampling_nets()
        was = net.training, head.training
        net.eval(), head.eval()
        try:
            tokens = self._generate(int(n), int(nfe), params, net, head, generator, classes)
        finally:
            net.train(was[0]), head.train(was[1])
        x = unpatchify(tokens, self.token_shape, self.p)
        if self.ae is not None:  # one decoder call for the whole batch
            x = self.ae.decode(x / self.latent_scale.scale)
        return x.clamp(*self.data.value_range) if self.data.value_range else x

    def _generate(self, n, K, params, net, head, generator, classes=None) -> torch.Tensor:
        L, dev = self.L, self.device
        guidance = float(params.get("guidance", 1.0))
        if classes is not None:
            classes = classes.to(dev)
            null = torch.full_like(classes, self.null_class)
        tokens = torch.zeros(n, L, self.d, device=dev)
        known = torch.zeros(n, L, dtype=torch.bool, device=dev)
        order = generation_order(n, L, self.order, generator, device=dev)
        tau = float(params["temperature"])
        m = masked_counts(L, K)
        for k in range(1, K + 1):
            if m[k - 1] == m[k] or n == 0:
                continue  # nothing to generate at this step: no network call
            idx = order[:, L - m[k - 1]: L - m[k]]  # the next n_k positions of each order

            def at_idx(z):
                return z.gather(1, idx[..., None].expand(-1, -1, z.shape[-1])).reshape(-1, z.shape[-1])

            z_sel = at_idx(net(tokens, known, classes) if classes is not None else net(tokens, known))
            step_head = head
            if guidance != 1.0:  # the linear schedule: 1 at the first step, `guidance` when all is known
                w = 1.0 + (guidance - 1.0) * (L - m[k - 1]) / L
                step_head = GuidedHead(head, at_idx(net(tokens, known, null)), w)
            if self.loss == "ce":
                logits = head(z_sel).double() / tau
                codes = torch.multinomial(logits.softmax(-1).to(generator.device), 1, generator=generator)
                new = head.codebook[codes.reshape(-1).to(dev)]
            else:
                new = sample_tokens(step_head, self.schedule, z_sel, self.d, int(params["diffusion_steps"]),
                                    tau, generator, self.clip)
            tokens = tokens.scatter(1, idx[..., None].expand(-1, -1, self.d), new.reshape(n, -1, self.d).to(tokens.dtype))
            known = known.scatter(1, idx, True)
        return tokens


@hookimpl
def gmbench_register_methods(register):
    register(MAR)


@hookimpl
def gmbench_register_claims(register):
    """MAR T1 (arXiv 2406.11838; ImageNet 256 FID): in every row (raster causal AR, random-order
    bidirectional MAR with one or several tokens per step) the diffusion loss beats
    cross-entropy over VQ tokens, and random-order bidirectional MAR beats raster order
    (REFERENCES.md ordering 9). Checked on digits FID at 10 steps (several tokens per step)
    and at 50 (16 effective steps: one token per step, as T1's one-token rows). T1's raster
    row is also causal; ``mar[order=raster]`` keeps bidirectional attention (docs/methods/mar.md)."""
    from gmbench.claims import Cell, PaperClaim

    for nfe in (10, 50):
        register(PaperClaim(
            name=f"mar-diffusion-loss-beats-ce-digits-fid-{nfe}", relation="better", metric="fid", dataset="digits",
            a=Cell("mar", "ddpm", nfe), b=Cell("mar[loss=ce]", "categorical", nfe), paper="2406.11838", table="MAR T1",
            statement=f"MAR with the per-token diffusion loss has lower FID than with cross-entropy over quantised tokens at {nfe} steps",
        ))
        register(PaperClaim(
            name=f"mar-random-order-beats-raster-digits-fid-{nfe}", relation="better", metric="fid", dataset="digits",
            a=Cell("mar", "ddpm", nfe), b=Cell("mar[order=raster]", "ddpm", nfe), paper="2406.11838", table="MAR T1",
            statement=f"MAR generating in random order has lower FID than in raster order at {nfe} steps",
        ))
