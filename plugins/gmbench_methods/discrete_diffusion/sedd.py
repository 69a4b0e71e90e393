"""SEDD: score entropy discrete diffusion (Lou, Meng & Ermon 2023, "Discrete Diffusion
Modeling by Estimating the Ratios of the Data Distribution", arXiv 2310.16834).

Forward process (Sec. 2 and 3.3): each token follows a continuous-time Markov chain with
rate matrix ``sigma(t) Q``; over total noise ``sigmabar(t) = int_0^t sigma`` its transition
is ``p_{t|0} = exp(sigmabar(t) Q)``. The two graphs (``graph=``; :mod:`.transitions`, row =
from, rows of ``Q`` sum to 0):

* ``"absorbing"`` (default; the paper's "absorb"): ``K = V + 1`` states with ``[MASK] = V``,
  ``Q = 1 e_m^T - I``: ``p_{t|0}`` keeps a token with probability ``e^{-sigmabar}`` and masks it
  otherwise;
* ``"uniform"``: ``K = V``, ``Q = 1 1^T / V - I``: ``p_{t|0}`` keeps it with ``e^{-sigmabar}``
  and otherwise draws a uniform token.

Noise: the log-linear schedule ``sigmabar(t) = -log(1 - (1 - eps) t)``,
``sigma(t) = (1 - eps) / (1 - (1 - eps) t)``, so the keep probability is ``1 - (1 - eps) t``.
``eps`` (the reference code's 1e-3) keeps ``sigmabar(1)`` finite. Here it defaults per graph:
0 for absorbing, so that ``t = 1`` is exactly all ``[MASK]``, the sampler's start, and the
bound's prior term is exactly 0 (with ``eps > 0`` the all-[MASK] base gives an infinite KL
term; the weighted integrand stays finite as ``t -> 1`` because the scores scale by
``1 / (e^{sigmabar} - 1)``, below); 1e-3 for uniform, where ``eps = 0`` would make the
integrand ``sigma(t) (s - log s - 1)`` diverge at ``t = 1`` for any imperfect score. (The
reference code trains "uniform" with a geometric schedule; the task fixes log-linear, so
only the graph differs between the two runs.)

Network (the concrete score ``s_theta(x, t)_{i, y} ~ p_t(x with x^i = y) / p_t(x)``): the shared
bidirectional :class:`gmbench.backbones.Transformer`, conditioned on ``t`` by adaLN (the
reference conditions on ``sigmabar(t)``, a monotone function of ``t``: the same
information), at the budget's size preset like ``mdlm``, reading the ``K`` states and
emitting ``V`` log-scores per position. As the reference code: the entry of the current
token is set to ``log 1 = 0``; for absorbing the outputs are shifted by
``-log(e^{sigmabar} - 1) - log V`` ("scale by sigma": the true ratio at a masked position is
``p_0(y | context) / (e^{sigmabar} - 1)``), and the ``[MASK]`` column, never used, is 0.
The adaLN layers make the network larger than mdlm's unconditioned one (1.26M against
0.80M parameters at ``small``, at almost the same FLOPs); ``time_conditioning=False``
(absorbing only: the scaling carries the time dependence) gives mdlm's network exactly.
Times are evaluated at ``min(t, 1 - 1e-9)`` so that ``e^{sigmabar}`` stays finite; the stratified
likelihood draws put mass ~1e-9 there, far below its Monte Carlo error.

Loss (denoising score entropy, Thm. 3.4, weighted by the rate as in Thm. 3.6): for a
position in state ``x = x_t^i`` with clean token ``x_0^i``,

    ``l_i = sum_{y != x} Q(y, x) [ s_y - r_y log s_y + K(r_y) ]``,   ``r_y = p_{t|0}(y | x_0^i) / p_{t|0}(x | x_0^i)``,
    ``K(a) = a (log a - 1)``,

(``Q(y, x) = pi_x``: the rate into ``x``; absorbing counts masked positions only), and the
loss of a sequence is ``sigma(t) sum_i l_i`` (the reference's ``dsigma * score_entropy``),
``t ~ U[t_min, 1]`` i.i.d. per sequence (``t_min = 1e-3``, the reference's sampling eps;
torch's global RNG, which the host seeds), reported per token like mdlm. ``K`` makes every
bracket ``>= 0``, zero at ``s_y = r_y``.

Likelihood (``bound``, Thm. 3.6): ``-log p_0^theta(x_0) <= int_0^1 sigma(t) E_{x_t ~ p_{t|0}}
[sum_i l_i] dt + KL(p_{1|0}(. | x_0) || p_base)`` with ``p_base = pi`` (all ``[MASK]``, or
uniform). :meth:`SEDD.log_likelihood` returns minus its estimate in nats per sequence:
``likelihood_samples`` stratified times in (0, 1] per sequence, one ``x_t`` each, plus the
prior term exactly (0 for absorbing). It bounds the continuous-time reverse process with
the learned scores, not the discretised samplers (as MDLM's bound).

Samplers (Sec. 4.2), both with adjustable ``nfe`` = reverse steps on the uniform grid
``1 = t_0 > t_1 > .. > t_nfe = 0``, one network call each, float64 draws:

* ``euler`` (tau-leaping): from ``x`` at ``t`` to ``t - dt`` each position moves to ``y != x``
  with probability ``dt sigma(t) s_y Q(y, x)`` and stays with the rest (clipped at 0: the
  reference's Gumbel draw never picks a negative stay probability either);
* ``analytic`` (Tweedie tau-leaping, Thm. 4.2): with ``delta = sigmabar(t) - sigmabar(t - dt)``,
  ``p(y) ∝ [exp(-delta Q) s]_y exp(delta Q)(y, x)``, i.e.
  ``(e^delta s_y + (1 - e^delta) pi_y sum_z s_z) (e^{-delta} [y = x] + (1 - e^{-delta}) pi_x)``,
  exact for one token given the exact score; negative entries clipped at 0.

The last step lands on ``t = 0``, where no token may be ``[MASK]``: for absorbing its
stay-masked probability is dropped there (the reference's noise-removal step truncates the
same way, as one extra network call after its predictor steps; here it is the last of the
``nfe`` steps, so NFE counts every call).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.backbones import Transformer
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage

from .masking import inference, sample_categorical, stratified_times
from .transitions import KINDS, KeepOrJump, log_or_neg_inf

#: largest time at which scores are evaluated (module docstring)
T_MAX = 1.0 - 1e-9


class LogLinearNoise:
    """``sigmabar(t) = -log(1 - (1 - eps) t)``; the keep probability is ``a(t) = e^{-sigmabar} = 1 - (1 - eps) t``."""

    def __init__(self, eps: float):
        self.eps = float(eps)

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """``a(t) = e^{-sigmabar(t)}``."""
        return 1.0 - (1.0 - self.eps) * t

    def one_minus_keep(self, t: torch.Tensor) -> torch.Tensor:
        """``1 - a(t) = (1 - eps) t`` (exact near 0)."""
        return (1.0 - self.eps) * t

    def total(self, t: torch.Tensor) -> torch.Tensor:
        """``sigmabar(t)``."""
        return -torch.log1p(-(1.0 - self.eps) * t)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) = d sigmabar / dt = (1 - eps) / a(t)``."""
        return (1.0 - self.eps) / self.keep(t)


def score_entropy(trans: KeepOrJump, log_score: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor,
                  keep: torch.Tensor) -> torch.Tensor:
    """Denoising score entropy ``l_i`` (module docstring) per position, shape (N, L), float64,
    without the ``sigma(t)`` factor.

    ``log_score`` (N, L, K) log ``s_y``; ``x_t`` (N, L) states; ``x0`` (N, L) clean tokens;
    ``keep`` (N,) ``a(t) = e^{-sigmabar(t)}``.
    """
    with torch.no_grad():
        log_p = log_or_neg_inf(trans.probs(x0, keep))  # log p_{t|0}(y | x0), (N, L, K)
        log_r = log_p - log_p.gather(-1, x_t[..., None])
        r = log_r.exp()
        k_r = torch.where(r > 0, r * (torch.where(r > 0, log_r, torch.zeros_like(log_r)) - 1.0), torch.zeros_like(r))
        own = nn.functional.one_hot(x_t, trans.num_states).bool()
        weight = trans.pi.to(x_t.device)[x_t]  # Q(y, x_t) = pi_{x_t} for y != x_t
    log_score = log_score.double()
    bracket = log_score.exp() - r * log_score + k_r
    return weight * torch.where(own, torch.zeros_like(bracket), bracket).sum(-1)


def euler_probs(trans: KeepOrJump, score: torch.Tensor, x: torch.Tensor, rate_dt: torch.Tensor) -> torch.Tensor:
    """tau-leaping step probabilities (N, L, K): ``dt sigma(t) s_y Q(y, x)`` off ``x``, the rest on ``x``
    (clipped at 0). ``score`` (N, L, K) is ``s``; ``rate_dt`` (N,) is ``dt * sigma(t)``."""
    move = rate_dt.reshape(-1, 1, 1) * score * trans.pi.to(x.device)[x][..., None]
    own = nn.functional.one_hot(x, trans.num_states).bool()
    move = torch.where(own, torch.zeros_like(move), move)
    stay = (1.0 - move.sum(-1, keepdim=True)).clamp_min(0.0)
    return torch.where(own, stay.expand_as(move), move)


def tweedie_probs(trans: KeepOrJump, score: torch.Tensor, x: torch.Tensor, keep_t: torch.Tensor,
                  keep_s: torch.Tensor) -> torch.Tensor:
    """Tweedie tau-leaping probabilities (N, L, K) from ``t`` to ``s < t`` (unnormalised, >= 0):
    ``[exp(-delta Q) s]_y * exp(delta Q)(y, x)`` with ``e^delta = a(s) / a(t)``."""
    e_delta = (keep_s / keep_t).reshape(-1, 1, 1)
    pi = trans.pi.to(x.device)
    staggered = e_delta * score + (1.0 - e_delta) * pi * score.sum(-1, keepdim=True)
    own = nn.functional.one_hot(x, trans.num_states).double()
    back = own / e_delta + (1.0 - 1.0 / e_delta) * pi[x][..., None]  # exp(delta Q)(y, x) over y
    return (staggered * back).clamp_min(0.0)


class SEDD(Method):
    """Score entropy discrete diffusion with the absorbing or uniform graph (see module docstring).

    Args:
        data: the dataset spec (text, with ``vocab_size``).
        model_size: backbone preset (the same as mdlm's at a budget).
        graph: ``"absorbing"`` (default; the paper's "absorb") or ``"uniform"``.
        eps: the log-linear schedule's ``eps``; None: 0 for absorbing (exact all-[MASK] prior,
            finite bound), 1e-3 for uniform (the reference code's value). Absorbing refuses
            ``eps > 0``: its bound's prior term would be infinite.
        t_min: training times are drawn in ``[t_min, 1]`` (1e-3, the reference's sampling
            eps: the loss's variance grows without bound as ``t -> 0``, as for mdlm).
            :meth:`log_likelihood` always integrates over (0, 1].
        lr: Adam learning rate (1e-3, mdlm's, so that only the objective differs; the
            reference uses 3e-4 over 400k steps).
        grad_clip: gradient-norm clip (1, mdlm's and the reference's).
        time_conditioning: condition the network on ``t`` (default True, as the reference).
            False is allowed for absorbing only: with the scale by sigma, the exact
            log-score is ``log p_0(y | unmasked tokens) - log(e^sigmabar - 1)``, whose
            ``t``-dependence the scaling carries, so the network need not see ``t`` (mdlm's
            default; the network then has mdlm's parameter count). Uniform noise hides ``t``.
        likelihood_samples: stratified times per sequence in :meth:`log_likelihood` (4, as mdlm).
        chunk_rows: sequences per network call at evaluation (memory bound).
    """

    name = "sedd"
    family = "discrete-diffusion"
    paper = "2310.16834"
    title = "Discrete Diffusion Modeling by Estimating the Ratios of the Data Distribution"
    modalities = ("text",)
    samplers = (
        SamplerInfo("euler", adjustable_nfe=True, deterministic=False, default_nfe=64),
        SamplerInfo("analytic", adjustable_nfe=True, deterministic=False, default_nfe=64),
    )
    likelihood = "bound"
    #: precision of the samplers' probabilities and categorical draws (recorded by the host)
    sampling_precision = "float64"

    def __init__(
        self,
        data,
        model_size: str = "small",
        graph: str = "absorbing",
        eps: float | None = None,
        t_min: float = 1e-3,
        lr: float = 1e-3,
        grad_clip: float = 1.0,
        time_conditioning: bool = True,
        likelihood_samples: int = 4,
        chunk_rows: int = 1024,
    ):
        super().__init__(data, model_size)
        if not data.vocab_size or len(data.shape) != 1:
            raise MethodError(f"sedd needs token sequences of shape (L,) with a vocab_size, got shape {data.shape}")
        if graph not in KINDS:
            raise MethodError(f"sedd: unknown graph {graph!r}; valid: {', '.join(KINDS)}")
        eps = (0.0 if graph == "absorbing" else 1e-3) if eps is None else float(eps)
        if not 0.0 <= eps < 1.0:
            raise MethodError(f"sedd: eps must be in [0, 1), got {eps!r}")
        if graph == "absorbing" and eps > 0:
            raise MethodError("sedd: the absorbing graph needs eps = 0 (at t = 1 every token must be [MASK], "
                              "or the bound's prior term against the all-[MASK] base is infinite)")
        if not time_conditioning and graph == "uniform":
            raise MethodError("sedd: the uniform graph needs time_conditioning=True (x_t does not reveal t)")
        if not 0.0 <= float(t_min) < 1.0:
            raise MethodError(f"sedd: t_min must be in [0, 1), got {t_min!r}")
        if int(likelihood_samples) < 1 or int(chunk_rows) < 1:
            raise MethodError("sedd: likelihood_samples and chunk_rows must be >= 1")
        self.vocab_size = data.vocab_size
        self.seq_len = data.shape[0]
        self.graph = graph
        self.trans = KeepOrJump(graph, self.vocab_size)
        self.noise = LogLinearNoise(eps)
        self.t_min, self.lr, self.grad_clip = float(t_min), lr, grad_clip
        self.likelihood_samples, self.chunk_rows = int(likelihood_samples), int(chunk_rows)
        self.time_conditioning = bool(time_conditioning)
        self.net = Transformer(self.trans.num_states, self.seq_len, out_dim=self.vocab_size, size=model_size,
                               causal=False, cond=self.time_conditioning)
        #: network calls of the last ``sample`` call
        self.last_sampling: dict = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def stages(self) -> list[Stage]:
        return [Stage("score_entropy", (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=self.grad_clip),))]

    # -- the score network ----------------------------------------------------------------

    def log_score(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log s_theta(x_t, t)``, shape (N, L, K), float64; ``t`` (N,) in [0, 1] (clamped at ``T_MAX``)."""
        t = t.double().clamp(max=T_MAX).to(x_t.device)
        out = (self.net(x_t, t.float()) if self.time_conditioning else self.net(x_t)).double()
        if self.trans.absorbing:  # scale by sigma: - log(e^sigmabar - 1) - log V
            log_ratio = torch.log(self.noise.keep(t)) - torch.log(self.noise.one_minus_keep(t))
            out = out + log_ratio.reshape(-1, 1, 1) - math.log(self.vocab_size)
            out = torch.cat([out, out.new_zeros(*out.shape[:-1], 1)], dim=-1)  # the [MASK] column: unused
        return out.scatter(-1, x_t[..., None], 0.0)  # s_{x_t} = 1

    def _log_score_chunked(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = [self.log_score(xc, tc) for xc, tc in zip(x_t.split(self.chunk_rows), t.split(self.chunk_rows))]
        if not parts:
            return torch.empty(0, self.seq_len, self.trans.num_states, dtype=torch.float64, device=self.device)
        return torch.cat(parts)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x_t ~ p_{t|0}(. | x0)`` per token; ``t`` (N,) (clamped at ``T_MAX`` like the scores)."""
        return self.trans.sample(x0, self.noise.keep(t.double().clamp(max=T_MAX)), generator)

    def weighted_score_entropy(self, log_score: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor,
                               t: torch.Tensor) -> torch.Tensor:
        """``sigma(t) sum_i l_i`` per sequence (N,), nats: the integrand of the bound."""
        t = t.double().clamp(max=T_MAX).to(x0.device)
        return self.noise.rate(t) * score_entropy(self.trans, log_score, x_t, x0, self.noise.keep(t)).sum(-1)

    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """``KL(p_{1|0}(. | x0) || pi)`` per sequence (0 for absorbing)."""
        return self.trans.prior_kl(x0, float(self.noise.keep(torch.tensor(1.0, dtype=torch.float64))))

    # -- training -------------------------------------------------------------------------

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        x0 = batch.long()
        u = torch.rand(x0.shape[0], dtype=torch.float64)  # torch's global RNG
        t = (self.t_min + (1.0 - self.t_min) * u).to(x0.device)
        x_t = self.perturb(x0, t)
        loss = self.weighted_score_entropy(self.log_score(x_t, t), x_t, x0, t)
        return {"adam": loss.sum() / x0.numel()}

    # -- likelihood -----------------------------------------------------------------------

    def _check_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.seq_len or x.is_floating_point():
            raise MethodError(
                f"sedd expects integer token ids of shape (N, {self.seq_len}), got {x.dtype} {tuple(x.shape)}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise MethodError(f"token ids must lie in 0..{self.vocab_size - 1}")
        return x.long().to(self.device)

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Minus the estimated bound (Thm. 3.6), nats per sequence (N,); randomness from ``generator``."""
        x0 = self._check_tokens(x)
        n, k = x0.shape[0], self.likelihood_samples
        t = stratified_times((n, k), generator).reshape(-1).to(self.device)
        xs = x0.repeat_interleave(k, dim=0)
        x_t = self.perturb(xs, t, generator)
        with inference(self.net):
            log_s = self._log_score_chunked(x_t, t)
        dwdse = self.weighted_score_entropy(log_s, x_t, xs, t).view(n, k).mean(1)
        return -(dwdse + self.prior_term(x0))

    # -- sampling -------------------------------------------------------------------------

    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sequences from ``nfe`` reverse steps of ``sampler`` (``euler`` or ``analytic``), float64 draws."""
        self.sampler(sampler)
        if int(nfe) < 1 or int(n) < 0:
            raise MethodError(f"sedd: need nfe >= 1 and n >= 0, got nfe={nfe}, n={n}")
        nfe = int(nfe)
        times = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64)
        x = self.trans.prior_sample((int(n), self.seq_len), generator, self.device)
        calls = 0
        with inference(self.net):
            for i in range(nfe):
                t = times[i].clamp(max=T_MAX).expand(x.shape[0]).to(self.device)
                s = times[i + 1].expand(x.shape[0]).to(self.device)
                score = self._log_score_chunked(x, t).exp()
                calls += 1
                if sampler == "euler":
                    probs = euler_probs(self.trans, score, x, (t - s) * self.noise.rate(t))
                else:
                    probs = tweedie_probs(self.trans, score, x, self.noise.keep(t), self.noise.keep(s))
                if i == nfe - 1 and self.trans.absorbing:
                    probs[..., self.trans.mask_id] = 0.0  # t = 0: no token stays [MASK]
                x = sample_categorical(probs, generator)
        self.last_sampling = {"steps": nfe, "network_calls": calls}
        return x


@hookimpl
def gmbench_register_methods(register):
    register(SEDD)


@hookimpl
def gmbench_register_claims(register):
    """SEDD T2 (arXiv 2310.16834), text8: the absorbing graph (<= 1.39 bits/char) beats the
    uniform one (<= 1.47), and SEDD-absorb beats D3PM-absorbing (<= 1.45, the paper's row).
    MDLM T2 (arXiv 2406.07524), OpenWebText: MDLM <= 23.21 against SEDD <= 24.10 perplexity,
    MDLM ahead (the survey's ordering MDLM <= SEDD): registered as ``better``. (Until a review
    it was a tie within 0.05 bits/char; but log2(24.10 / 23.21) = 0.054 bits is per GPT-2 BPE
    token, about 0.013 per character, and the paper reports MDLM ahead.) Checked on every text
    dataset at equal backbone and budget; ``sedd[graph=uniform]`` is the run with
    ``--set sedd.graph=uniform``."""
    from gmbench.claims import Cell, PaperClaim

    register(PaperClaim(
        name="sedd-absorbing-beats-uniform-text-bpc", relation="better", metric="test_bpc", dataset="modality:text",
        a=Cell("sedd"), b=Cell("sedd[graph=uniform]"), paper="2310.16834", table="SEDD T2",
        statement="SEDD with the absorbing graph has a lower bits/char bound than with the uniform graph",
    ))
    register(PaperClaim(
        name="sedd-beats-d3pm-text-bpc", relation="better", metric="test_bpc", dataset="modality:text",
        a=Cell("sedd"), b=Cell("d3pm"), paper="2310.16834", table="SEDD T2 (D3PM absorbing row)",
        statement="SEDD (absorbing) has a lower bits/char bound than D3PM (absorbing) on the same data and budget",
    ))
    register(PaperClaim(
        name="mdlm-beats-sedd-text-bpc", relation="better", metric="test_bpc", dataset="modality:text",
        a=Cell("mdlm"), b=Cell("sedd"), paper="2406.07524", table="MDLM T2 (23.21 vs 24.10 ppl)",
        statement="MDLM has a lower bits/char bound than SEDD (absorbing) on the same data and budget",
    ))
