"""AR: a causal transformer language model, the reference every diffusion LM is compared with.

The model is the transformer of Vaswani et al. 2017 (arXiv 1706.03762) used as a
decoder-only language model with the GPT recipe (Radford et al. 2018, "Improving
Language Understanding by Generative Pre-Training", and 2019, "Language Models are
Unsupervised Multitask Learners": a causal pre-LN transformer trained by next-token
cross-entropy). The GPT reports are not on arXiv; the class's ``paper`` is therefore
1706.03762, the citable paper whose architecture and causal decoding this is. MDLM
(arXiv 2406.07524, T1-2) and BD3-LM (arXiv 2503.09573, T3-4) report such a model as
the autoregressive baseline their bounds are compared with.

Network: the shared :class:`gmbench.backbones.Transformer` with ``causal=True``, at the
same size preset as ``mdlm`` (the same width, depth and heads at the same
``model_size``, rotary positions as mdlm's default), reading ``V + 1`` ids (the extra
id ``V`` is a BOS token, where mdlm's is ``[MASK]``) and predicting ``V`` logits: the
two methods have the same parameter count, so a difference on a board comes from the
method. The input of a window ``x_0..x_{L-1}`` is ``[BOS, x_0, .., x_{L-2}]`` and the
output at position ``i`` predicts ``x_i``, as gmbench's internal reference LM
(:class:`gmbench.metrics.genppl.ReferenceAR`) does.

Training loss: next-token cross-entropy, the mean over the batch's tokens (nats per
token). Adam at 1e-3, gradient norm clipped at 1, no warm-up: mdlm's settings, so
that only the objective differs.

Likelihood (``exact``): :meth:`AR.log_likelihood` is the sum over the window of
``log p(x_i | BOS, x_<i)`` in nats, by one full forward pass, log-softmax in float64.
It is the model's own distribution: ``temperature`` and ``top_p`` change sampling only.

Sampler ``ancestral``: one token per network call, ``L`` calls per sample, so the NFE
is not adjustable and each instance declares ``default_nfe = L`` (the class's value,
64, is synthlang's default window, what ``gmbench plugins list`` shows). Softmax and
categorical draw in float64 (``sampling_precision``): float32 categorical sampling
lowers the effective temperature and flatters generative perplexity (Zheng et al.
2024, arXiv 2409.02908). Draws are by inverse CDF from one float64 uniform per token
(the helper mdlm uses), so the random stream does not depend on the model.

KV cache (``cache=True``, the default): :class:`CausalLM` decodes one position at a time
through the shared backbone's incremental path (``Transformer.forward(x, cache=KVCache(),
store=1)``): the new position's keys and values (after the rotary rotation) are appended
to the cache, and its query attends to every cached position. Each step costs one position's
work instead of a forward over the whole prefix. The wrapper is the module that
:meth:`AR.modules` returns, so the host's forward hooks count exactly one call per
generated token, with or without the cache. ``cache=False`` recomputes the prefix
each step (the same calls, the same tokens; tests/test_ar.py checks both).

Temperature and top-p are hyper-parameters (``--set ar.temperature=0.8``,
``--set ar.top_p=0.9``), not extra samplers: the host selects a method's ranked
sampler automatically on the validation split, and truncating the distribution lowers
generative perplexity without making the model better, so a truncated sampler would
be picked for the wrong reason. As a hyper-parameter it is a separate, visibly labelled
row (``ar[top_p=0.9]``). The default is pure ancestral sampling at temperature 1: the
model's own distribution, which is what a likelihood-trained diffusion LM's sampler
is compared with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gmbench import hookimpl
from gmbench.backbones import Transformer, count_parameters
from gmbench.backbones.transformer import KVCache
from gmbench.method import Method, MethodError, OptimizerSpec, SamplerInfo, Stage, backbone_label

from .masking import inference, sample_categorical

#: synthlang's default window: the class-level NFE shown before a dataset is known
DEFAULT_LENGTH = 64


class CausalLM(nn.Module):
    """The shared causal :class:`Transformer` with a one-position KV-cached forward.

    ``forward(x)`` is the backbone's full forward, ``(N, L)`` ids to ``(N, L, V)`` logits.
    ``forward(x, cache)`` takes the ids ``(N, 1)`` at position ``cache.length``, appends
    their keys and values to ``cache`` and returns the logits ``(N, 1, V)`` of that
    position, equal (up to floating point) to the full forward's at that position.
    """

    def __init__(self, vocab_size: int, seq_len: int, size: str) -> None:
        super().__init__()
        # vocab_size + 1 ids: the extra one is BOS; V outputs (BOS is never predicted)
        self.backbone = Transformer(vocab_size + 1, seq_len, out_dim=vocab_size, size=size, causal=True)

    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is None:
            return self.backbone(x)
        if x.ndim != 2 or x.shape[1] != 1:
            raise ValueError(f"cached decoding takes one position, ids of shape (N, 1), got {tuple(x.shape)}")
        # the backbone's incremental path: the new position attends to the cached ones and
        # its keys and values are appended (the tests compare with the full forward)
        return self.backbone(x, cache=cache, store=1)


class AR(Method):
    """Causal transformer language model (see module docstring).

    Args:
        data: the dataset spec (text, with ``vocab_size``).
        model_size: backbone preset (the same as mdlm's at a budget).
        lr, grad_clip: Adam learning rate and gradient-norm clip (mdlm's values).
        temperature: divides the logits before sampling (> 0; 1 = the model's distribution).
        top_p: nucleus sampling (Holtzman et al. 2019, arXiv 1904.09751): sample from
            the smallest set of most likely tokens whose probability reaches ``top_p``
            (in (0, 1]; 1 = no truncation).
        cache: decode with the KV cache (default) or recompute the prefix each step.
        chunk_rows: sequences per network call when scoring likelihoods (memory bound).
    """

    name = "ar"
    family = "autoregressive"
    paper = "1706.03762"
    title = "Causal transformer language model (GPT recipe: Radford et al. 2018, 2019)"
    modalities = ("text",)
    samplers = (SamplerInfo("ancestral", adjustable_nfe=False, deterministic=False, default_nfe=DEFAULT_LENGTH),)
    likelihood = "exact"
    #: precision of the sampler's softmax and categorical draws (recorded by the host)
    sampling_precision = "float64"

    def __init__(
        self,
        data,
        model_size: str = "small",
        lr: float = 1e-3,
        grad_clip: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        cache: bool = True,
        chunk_rows: int = 1024,
    ):
        super().__init__(data, model_size)
        if not data.vocab_size or len(data.shape) != 1:
            raise MethodError(f"ar needs token sequences of shape (L,) with a vocab_size, got shape {data.shape}")
        if not float(temperature) > 0 or not math.isfinite(float(temperature)):
            raise MethodError(f"ar: temperature must be a finite number > 0, got {temperature!r}")
        if not 0.0 < float(top_p) <= 1.0:
            raise MethodError(f"ar: top_p must be in (0, 1], got {top_p!r}")
        if int(chunk_rows) < 1:
            raise MethodError("ar: chunk_rows must be >= 1")
        self.vocab_size = data.vocab_size
        self.bos_id = data.vocab_size
        self.seq_len = data.shape[0]
        self.lr, self.grad_clip = lr, grad_clip
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.cache, self.chunk_rows = bool(cache), int(chunk_rows)
        self.net = CausalLM(self.vocab_size, self.seq_len, model_size)
        # one network call per token: the instance declares its data's L (the host reads
        # the instance's samplers)
        self.samplers = (SamplerInfo("ancestral", adjustable_nfe=False, deterministic=False, default_nfe=self.seq_len),)
        #: network calls of the last ``sample`` call
        self.last_sampling: dict = {}

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def stages(self) -> list[Stage]:
        return [Stage("nll", (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=self.grad_clip),))]

    def backbone(self) -> str:
        # the trained module is a wrapper (CausalLM) around the shared Transformer
        return backbone_label("Transformer", self.model_size, count_parameters(self.net))

    # -- the model ------------------------------------------------------------------

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``[BOS, x_0, .., x_{L-2}]``: position ``i`` of the output predicts ``x_i``."""
        bos = torch.full((x.shape[0], 1), self.bos_id, dtype=torch.long, device=x.device)
        return torch.cat([bos, x[:, :-1]], dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(N, L, V)`` for the windows ``x`` (one full forward pass)."""
        return self.net(self._inputs(x.long()))

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        x = batch.long()
        return {"adam": F.cross_entropy(self.logits(x).reshape(-1, self.vocab_size), x.reshape(-1))}

    # -- likelihood -------------------------------------------------------------------

    def _check_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.seq_len or x.is_floating_point():
            raise MethodError(
                f"ar expects integer token ids of shape (N, {self.seq_len}), got {x.dtype} {tuple(x.shape)}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise MethodError(f"token ids must lie in 0..{self.vocab_size - 1}")
        return x.long().to(self.device)

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``log p(x) = sum_i log p(x_i | BOS, x_<i)`` per window, nats, float64, shape (N,). Exact;
        deterministic (``generator`` is unused)."""
        x = self._check_tokens(x)
        parts = []
        with inference(self.net):
            for chunk in x.split(self.chunk_rows):
                logp = self.logits(chunk).double().log_softmax(-1)
                parts.append(logp.gather(-1, chunk[..., None]).squeeze(-1).sum(1))
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=self.device)

    # -- sampling ---------------------------------------------------------------------

    def next_token_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Sampling distribution ``(N, V)`` in float64 from last-position logits: temperature, then top-p."""
        probs = (logits.double() / self.temperature).softmax(-1)
        if self.top_p < 1.0:
            ordered, order = probs.sort(dim=-1, descending=True, stable=True)
            # keep a token while the mass before it is below top_p: the smallest prefix reaching top_p
            keep = (ordered.cumsum(-1) - ordered) < self.top_p
            probs = torch.zeros_like(probs).scatter(-1, order, ordered * keep)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` windows, one token per network call (``nfe`` must be ``L``); float64 draws."""
        self.sampler(sampler)
        if int(n) < 0:
            raise MethodError(f"ar: need n >= 0, got {n}")
        if int(nfe) != self.seq_len:
            raise MethodError(
                f"ar draws one token per network call: nfe must be the window length {self.seq_len}, got {nfe}"
            )
        n = int(n)
        x = torch.empty(n, self.seq_len, dtype=torch.long, device=self.device)
        prev = torch.full((n, 1), self.bos_id, dtype=torch.long, device=self.device)
        calls = 0
        with inference(self.net):
            cache = self.net.new_cache() if self.cache else None
            for i in range(self.seq_len):
                if cache is not None:
                    logits = self.net(prev, cache)[:, -1]
                else:  # the whole prefix again, [BOS, x_0..x_{i-1}]
                    logits = self.net(torch.cat([prev.new_full((n, 1), self.bos_id), x[:, :i]], dim=1))[:, -1]
                calls += 1
                x[:, i] = sample_categorical(self.next_token_probs(logits), generator)
                prev = x[:, i : i + 1]
        self.last_sampling = {"steps": self.seq_len, "network_calls": calls}
        return x


@hookimpl
def gmbench_register_methods(register):
    register(AR)


@hookimpl
def gmbench_register_claims(register):
    """MDLM T1-2 (arXiv 2406.07524) and BD3-LM T3-4 (arXiv 2503.09573) order perplexities
    AR < BD3-LM < MDLM: the AR model's exact likelihood beats the masked diffusion model's
    bound at equal model size and training. Checked on synthlang, where both are trained
    on the same backbone preset and budget; the pairing by seed holds the data fixed."""
    from gmbench.claims import Cell, PaperClaim

    register(PaperClaim(
        name="ar-beats-mdlm-synthlang-bpc", relation="better", metric="test_bpc", dataset="synthlang",
        a=Cell("ar"), b=Cell("mdlm"), paper="2406.07524", table="MDLM T1-2 (BD3-LM T3-4: AR < BD3-LM < MDLM)",
        statement="the autoregressive model's exact test bits/char are below MDLM's bound on the same data and budget",
    ))
    # Sample quality against sampling cost, for every diffusion LM against AR's: the papers
    # show generative perplexity falling as the number of denoising steps grows, and BD3-LM T7
    # (GPT-2-large gen. ppl at L = 1024: AR 14.1, SEDD 52.0, MDLM 46.8, BD3-LM 25.7-33.4) has
    # every diffusion LM above the AR model, which spends one network call per token (64 on
    # synthlang). Generative perplexity under the suite's reference AR model (docs/metrics.md);
    # 10 -> 100 steps (per block for BD3-LM).
    diffusion_lms = (("mdlm", "ancestral", "2406.07524", "MDLM"), ("sedd", "analytic", "2310.16834", "SEDD"),
                     ("d3pm", "ancestral", "2107.03006", "D3PM"), ("bd3lm", "ancestral", "2503.09573", "BD3-LM"))
    for method, sampler, paper, short in diffusion_lms:
        register(PaperClaim(
            name=f"{method}-samples-improve-with-steps-synthlang", relation="improves", metric="gen_ppl",
            dataset="synthlang", a=Cell(method, sampler), nfes=(10, 100), paper=paper,
            table=f"{short} (gen. ppl against sampling steps)",
            statement=f"{method}'s {sampler} samples have lower generative perplexity at 100 steps than at 10",
        ))
        register(PaperClaim(
            name=f"ar-samples-beat-{method}-at-100-steps-synthlang", relation="better", metric="gen_ppl",
            dataset="synthlang", a=Cell("ar", "ancestral", 64), b=Cell(method, sampler, 100), paper="2503.09573",
            table="BD3-LM T7",
            statement=f"AR's samples (64 network calls) have lower generative perplexity than {method}'s at 100 steps",
        ))
