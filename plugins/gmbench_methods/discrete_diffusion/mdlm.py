"""MDLM: masked diffusion language model (Sahoo et al. 2024, "Simple and Effective
Masked Diffusion Language Models", arXiv 2406.07524).

Forward process: absorbing state ``[MASK]`` (id ``V`` after the data tokens
``0..V-1``), each token masked independently with probability ``1 - alpha_t``; the
schedule is log-linear ``alpha_t = 1 - t`` by default (``schedule="cosine"`` too).
The helpers live in :mod:`.masking`, shared with the other masked-diffusion plugins.

Network: the shared :class:`gmbench.backbones.Transformer`, bidirectional, reading
``V + 1`` ids and emitting ``V`` logits: the SUBS parameterisation's zero-masking is
structural (there is no ``[MASK]`` output), carry-over unmasking is applied on top.
No time conditioning by default: with SUBS the input's number of masks already tells
the network roughly where it is in the process, and the paper finds conditioning
unnecessary (the reference code defaults to ``time_conditioning: False``). It also
makes the sampler's caching exact (below). ``time_conditioning=True`` feeds ``t``
through the backbone's adaLN.

Training loss: the Rao-Blackwellised continuous-time NELBO (Eq. 10-11),
``-alpha'_t / (1 - alpha_t) * sum_{masked l} -log x_theta(x_l | z_t)``, with one time
per sequence drawn by stratified (low-discrepancy) sampling over the batch and mapped
to ``[t_min, 1]`` (``t = t_min + (1 - t_min) u``, as the reference code's
``_sample_t`` does with ``eps = 1e-3``), reported
per token (the batch's summed per-sequence NELBO divided by its number of tokens, as
the reference code averages over tokens). Its noise comes from torch's global RNG,
which the host seeds per run. No EMA: at gmbench's budgets (tens to thousands of
steps) the paper's 0.9999 EMA would average mostly the initialisation.

Likelihood: :meth:`MDLM.log_likelihood` returns minus the same NELBO, nats per
sequence, averaged over ``likelihood_samples`` stratified times per sequence — a
lower bound on ``log p(x)`` (the record labels it ``bound``).

Discrete-time bounds: :meth:`MDLM.log_likelihood_steps` with ``steps=T`` is minus the
``T``-step NELBO (Eq. 8: ``sum_{i=1}^T E_q[(alpha_s - alpha_t) / (1 - alpha_t) sum_{masked l}
-log x_theta(x_l | z_t)]``, ``t = i/T``, ``s = (i-1)/T``; the reconstruction and prior terms
are 0 since ``alpha_0 = 1``, ``alpha_1 = 0``), estimated from one uniform step per draw.
It is what an ancestral sampler with ``T`` steps is trained to bound; the paper (Sec. 3.2,
Table 8 of the appendix) shows it loosens as ``T`` falls and tends to the continuous bound.
The record gets them through the model metric :class:`DiscreteTimeBound`
(``likelihood_steps``: ``test_bpc_T10``, ``test_bpc_T100``, ``test_bpc_T1000`` and
``test_bpc_Tinf``, the continuous bound on the same draws), which this module registers
for every method with a ``log_likelihood_steps`` (bd3lm has one too) and skips for the
others. The host's contract has no place for a second likelihood of one method, so this
is a plugin-registered metric; see docs/methods/mdlm.md for the core change it stands in for.

Sampler ``ancestral`` (the reverse process of Sec. 3.2): ``nfe`` uniform steps from
``t = 1`` (all ``[MASK]``) to ``t = 0``; at each step a masked token is unmasked with
probability ``(alpha_s - alpha_t) / (1 - alpha_t)`` into a token drawn from the
denoiser (softmax and categorical draw in float64, as ``sampling_precision`` declares:
float32 categorical sampling lowers the effective temperature and so flatters generative
perplexity, Zheng et al. 2024, arXiv 2409.02908). Since ``alpha_0 = 1`` the last
step unmasks everything; should a schedule leave masks at ``t = 0``, one more network
call fills them from the denoiser's distribution (not its argmax, unlike the reference
code's final noise-removal step).
``nfe`` is the number of reverse steps, an upper bound on network evaluations per
sample: with ``cache=True`` (the paper's caching for efficient sampling) a sequence in
which no token changed since the last call reuses its previous prediction, which is exact
for a time-unconditioned network, and a sequence with no mask left needs no call at all;
a sample thus costs at most ``min(nfe, L)`` calls. ``last_sampling`` reports the
evaluations actually made (``evals_per_sample``; at NFE 100 on synthlang about half the
steps), and the host counts the calls of one sample (``nfe_counted``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gmbench import hookimpl
from gmbench.backbones import Transformer
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage
from gmbench.metrics.base import EvalContext, Metric, MetricOutput, MetricSkipped

from .masking import NoiseSchedule, get_schedule, mask_tokens, masked_nelbo, sample_categorical, stratified_times
from .masking import inference, snap_to_steps, subs_log_probs, unmask_step


class MDLM(Method):
    """Masked diffusion language model (see module docstring).

    Args:
        data: the dataset spec (text, with ``vocab_size``).
        model_size: backbone preset.
        schedule: ``"loglinear"`` (``alpha_t = 1 - t``, default), ``"cosine"``, or a
            :class:`~.masking.NoiseSchedule`.
        time_conditioning: condition the Transformer on ``t`` (default False).
        lr, grad_clip: Adam learning rate and gradient-norm clip. The paper uses AdamW
            without weight decay (the same thing) at 3e-4 with 2500 warm-up steps over
            1M steps; gmbench budgets are hundreds of steps, so a larger rate and no
            warm-up. On synthlang 1e-3 left the unigram plateau soonest for both the
            tiny and small presets (3e-4 later; 3e-3 kept the small preset on it for
            1200 steps). Clip at 1 as the paper.
        t_min: lower floor of the training times, which are drawn in ``[t_min, 1]``
            (default 1e-3, the reference code's ``eps`` in ``_sample_t``). The loglinear
            schedule weighs a masked token's loss by ``1 / t``: for ``t -> 0`` a sequence
            has about ``t L`` masked tokens, each weighted ``1 / t``, so the per-batch loss
            has unbounded variance (its second moment grows like ``log(1 / t_min)``) and
            rare batches with a tiny ``t`` dominate the gradient. The floor leaves out
            the time integral's part below ``t_min``, which moves the expected loss by a
            relative ``O(t_min)``. ``t_min = 0`` restores times in (0, 1].
            :meth:`log_likelihood` always uses (0, 1]: the bound must cover all ``t``.
        likelihood_samples: stratified times per sequence in :meth:`log_likelihood`.
            4 by default: the test metric averages over 2000 sequences, so its Monte
            Carlo error is already ~0.01 bit/char, while 16 made the test-likelihood
            pass cost more than the whole ``small`` training run (72 s against 44 s
            of CPU) and pushed evaluation past the budget's cap.
        cache: reuse predictions for unchanged sequences while sampling (exact up to
            floating-point effects of the smaller batch).
        chunk_rows: sequences per network call at evaluation (memory bound).
    """

    name = "mdlm"
    family = "discrete-diffusion"
    paper = "2406.07524"
    title = "Simple and Effective Masked Diffusion Language Models"
    modalities = ("text",)
    samplers = (SamplerInfo("ancestral", adjustable_nfe=True, deterministic=False, default_nfe=64),)
    likelihood = "bound"
    #: precision of the sampler's softmax and categorical draws (recorded by the host)
    sampling_precision = "float64"

    def __init__(
        self,
        data,
        model_size: str = "small",
        schedule: str | NoiseSchedule = "loglinear",
        time_conditioning: bool = False,
        lr: float = 1e-3,
        grad_clip: float = 1.0,
        t_min: float = 1e-3,
        likelihood_samples: int = 4,
        cache: bool = True,
        chunk_rows: int = 1024,
    ):
        super().__init__(data, model_size)
        if not data.vocab_size or len(data.shape) != 1:
            raise MethodError(f"mdlm needs token sequences of shape (L,) with a vocab_size, got shape {data.shape}")
        if not 0.0 <= float(t_min) < 1.0:
            raise MethodError(f"mdlm: t_min must be in [0, 1), got {t_min!r}")
        if int(likelihood_samples) < 1 or int(chunk_rows) < 1:
            raise MethodError("mdlm: likelihood_samples and chunk_rows must be >= 1")
        self.vocab_size = data.vocab_size
        self.mask_id = data.vocab_size
        self.seq_len = data.shape[0]
        self.schedule = get_schedule(schedule)
        self.time_conditioning = bool(time_conditioning)
        self.lr, self.grad_clip, self.t_min = lr, grad_clip, float(t_min)
        self.likelihood_samples, self.cache, self.chunk_rows = int(likelihood_samples), bool(cache), int(chunk_rows)
        self.net = Transformer(
            self.vocab_size + 1, self.seq_len, out_dim=self.vocab_size, size=model_size, causal=False,
            cond=self.time_conditioning,
        )
        #: network evaluations of the last ``sample`` call (see module docstring)
        self.last_sampling: dict = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def stages(self) -> list[Stage]:
        return [Stage("nelbo", (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=self.grad_clip),))]

    # -- the denoiser -------------------------------------------------------------

    def _log_probs(self, z: torch.Tensor, t: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """SUBS log-probabilities ``log x_theta(z_t)``, shape (N, L, V + 1), softmax in ``dtype``."""
        logits = self.net(z, t.float()) if self.time_conditioning else self.net(z)
        return subs_log_probs(logits.to(dtype), z, self.mask_id)

    def _log_probs_chunked(self, z: torch.Tensor, t: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        parts = [self._log_probs(zc, tc, dtype) for zc, tc in zip(z.split(self.chunk_rows), t.split(self.chunk_rows))]
        return torch.cat(parts) if parts else torch.empty(0, self.seq_len, self.vocab_size + 1, dtype=dtype)

    # -- training -----------------------------------------------------------------

    def nelbo(self, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One-sample NELBO estimate (Eq. 10-11) of each row of ``x`` at its time ``t``, nats per sequence."""
        z, masked = mask_tokens(x, t, self.schedule, self.mask_id, generator)
        return masked_nelbo(self._log_probs(z, t), x, masked, t, self.schedule)

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        x = batch.long()
        u = stratified_times((x.shape[0],), device=x.device)  # one stratum per sequence
        t = self.t_min + (1.0 - self.t_min) * u  # floored: the 1/t weight stays bounded
        return {"adam": self.nelbo(x, t).sum() / x.numel()}

    # -- likelihood ---------------------------------------------------------------

    def _check_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.seq_len or x.is_floating_point():
            raise MethodError(
                f"mdlm expects integer token ids of shape (N, {self.seq_len}), got {x.dtype} {tuple(x.shape)}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise MethodError(f"token ids must lie in 0..{self.vocab_size - 1}")
        return x.long().to(self.device)

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Minus the NELBO, nats per sequence, shape (N,): a lower bound on ``log p(x)``.

        Each sequence is scored at ``likelihood_samples`` stratified times, one mask
        draw each; all randomness comes from ``generator``.
        """
        return self.log_likelihood_steps(x, generator)

    def log_likelihood_steps(
        self, x: torch.Tensor, generator: torch.Generator, steps: int | None = None, samples: int | None = None
    ) -> torch.Tensor:
        """Minus the ``steps``-step NELBO (Eq. 8), or the continuous-time one (Eq. 10-11) for
        ``steps=None``, nats per sequence, shape (N,), from ``samples`` (default
        ``likelihood_samples``) stratified times per sequence.

        The random draws do not depend on ``steps`` (a time ``u`` becomes the step
        ``ceil(u T) / T``), so two calls with equally seeded generators score the same
        masks: their difference is the bounds' difference, without their Monte Carlo noise.
        """
        x = self._check_tokens(x)
        n, k = x.shape[0], int(samples or self.likelihood_samples)
        t = snap_to_steps(stratified_times((n, k), generator), steps).reshape(-1).to(self.device)
        xs = x.repeat_interleave(k, dim=0)
        z, masked = mask_tokens(xs, t, self.schedule, self.mask_id, generator)
        with inference(self.net):
            log_probs = self._log_probs_chunked(z, t)
        return -masked_nelbo(log_probs, xs, masked, t, self.schedule, steps).view(n, k).mean(1)

    # -- sampling -----------------------------------------------------------------

    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` sequences from ``nfe`` ancestral steps (module docstring); softmax and draws in float64."""
        self.sampler(sampler)
        if int(nfe) < 1 or int(n) < 0:
            raise MethodError(f"mdlm: need nfe >= 1 and n >= 0, got nfe={nfe}, n={n}")
        nfe = int(nfe)
        z = torch.full((int(n), self.seq_len), self.mask_id, dtype=torch.long, device=self.device)
        times = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64)
        alphas = self.schedule.alpha(times).tolist()
        probs = torch.empty(z.shape[0], self.seq_len, self.vocab_size + 1, dtype=torch.float64, device=self.device)
        stale = torch.ones(z.shape[0], dtype=torch.bool, device=self.device)  # rows needing a network call
        evals = calls = 0
        with inference(self.net):
            for i in range(nfe):
                if not self.cache or self.time_conditioning:
                    stale[:] = True
                if stale.any():
                    rows = stale.nonzero().squeeze(1)
                    t = times[i].expand(len(rows)).to(self.device)
                    probs[rows] = self._log_probs_chunked(z[rows], t, torch.float64).exp()
                    evals, calls = evals + len(rows), calls + 1
                new = unmask_step(z, probs, alphas[i], alphas[i + 1], self.mask_id, generator)
                # a call only for rows that changed and still have masks to fill
                stale = (new != z).any(1) & (new == self.mask_id).any(1)
                z = new
            left = z == self.mask_id
            if left.any():  # only for schedules with alpha_0 < 1 (module docstring)
                t = torch.zeros(z.shape[0], dtype=torch.float64, device=self.device)
                fill = sample_categorical(self._log_probs_chunked(z, t, torch.float64).exp(), generator)
                z = torch.where(left, fill, z)
                evals, calls = evals + z.shape[0], calls + 1
        self.last_sampling = {"steps": nfe, "network_calls": calls, "evals_per_sample": evals / max(z.shape[0], 1)}
        return z


class DiscreteTimeBound(Metric):
    """Test bits/char of a masked diffusion model's ``T``-step NELBO (MDLM Eq. 8) for ``T``
    in :attr:`steps`, and of its continuous-time NELBO, all on the same draws.

    Applies to any method with ``log_likelihood_steps(x, generator, steps, samples)``
    (mdlm, bd3lm); skipped for the others. One time (per block, for bd3lm) per test
    sequence; the generator of each batch is seeded alike for every ``T``, so the
    columns share their masks and their differences are paired (their Monte Carlo noise
    mostly cancels), while each column alone is a one-draw estimate whose standard error
    is larger than ``test_bpc``'s (which averages ``likelihood_samples`` draws).
    """

    #: sorts after ``likelihood``: the host runs model metrics in name order under one
    #: deadline, and the unified likelihood must not wait for these extra columns
    name = "likelihood_steps"
    version = "1"
    kind = "model"
    likelihood_values = True  # bounds, labelled as the method's likelihood
    modalities = ("text",)
    description = "text: the diffusion NELBO with T = 10, 100, 1000 steps and continuous time, bits/char"
    steps = (10, 100, 1000)
    outputs = tuple(
        MetricOutput(f"test_bpc_T{s}", "lower", f"text: the {s}-step NELBO (discrete time), bits/char", "bits/char")
        for s in steps
    ) + (MetricOutput("test_bpc_Tinf", "lower", "text: the continuous-time NELBO on the same draws", "bits/char"),)
    #: half the likelihood's 2000: four bounds per sequence cost as much as the likelihood's
    #: four draws on all 2000, and the paired differences need few sequences
    max_examples = 1000
    batch_size = 250

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        return {"split": "test", "max_examples": self.max_examples, "steps": list(self.steps), "draws_per_sequence": 1}

    def score_model(self, method, ctx: EvalContext) -> dict:
        import time

        score = getattr(method, "log_likelihood_steps", None)
        if score is None:
            raise MetricSkipped(f"method {method.name!r} has no discrete-time diffusion bound")
        x = ctx.test[: self.max_examples].to(ctx.device)
        totals = dict.fromkeys((*self.steps, None), 0.0)
        with torch.no_grad():
            for i, chunk in enumerate(x.split(self.batch_size)):
                if ctx.deadline is not None and time.monotonic() > ctx.deadline:
                    raise MetricSkipped(
                        f"not evaluated: the likelihood's share of the evaluation cap was used up after "
                        f"{i * self.batch_size} of {len(x)} test examples of the discrete-time bounds")
                for steps in totals:
                    g = torch.Generator(device=ctx.device).manual_seed(ctx.seed * 1_000_003 + 104_729 + i)
                    ll = score(chunk, g, steps=steps, samples=1).double()
                    if ll.shape != (chunk.shape[0],) or not torch.isfinite(ll).all():
                        raise ValueError(f"log_likelihood_steps returned {tuple(ll.shape)} values, or NaN/inf")
                    totals[steps] -= float(ll.sum())
        chars = len(x) * ctx.dataset.spec().dims * math.log(2)
        return {(f"test_bpc_T{s}" if s else "test_bpc_Tinf"): total / chars for s, total in totals.items()}


@hookimpl
def gmbench_register_methods(register):
    register(MDLM)


@hookimpl
def gmbench_register_metrics(register):
    register(DiscreteTimeBound())
