"""Generative perplexity: how likely generated text is under a reference language model.

The literature scores diffusion-LM samples with GPT-2 large (MDLM, BD3-LM);
that needs internet weights and an English tokenizer, and means nothing for a
synthetic language. gmbench's reference is therefore its own: a causal
:class:`~gmbench.backbones.Transformer` (:class:`ReferenceAR`) trained on the
dataset's train split by the host's own loop (:func:`gmbench.training.train`)
under the run's budget — the same text FLOPs, batch size and model-size preset
any method gets. It is trained once per (dataset, budget, seed, version) and
cached as safetensors under ``<cache>/reference_ar/``; its seed is fixed (0,
the ``reference_seed`` option) so every method and seed of a comparison is
scored by the same model.

``gen_ppl = exp(mean NLL per character of the samples)``; ``gen_ppl_gap`` is
``|ln gen_ppl - ln ppl(test windows)|``, the distance in nats/char from what
real text gets under the same reference — unlike ``gen_ppl`` it cannot be won
by collapsing onto a few likely phrases. Read ``gen_ppl`` with the degeneracy
guards (``text_degeneracy``) and the method's ``sampling_precision``.

``gen_ppl_gpt2``: GPT-2 through ``transformers`` when it is installed *and* a
local model folder is given (``gpt2_weights`` option or ``$GMBENCH_GPT2_WEIGHTS``);
otherwise skipped with a note. Only meaningful for natural-language datasets.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gmbench.method import Method, OptimizerSpec, SamplerInfo, Stage
from gmbench.metrics.base import EvalContext, Metric, MetricError, MetricOutput, MetricSkipped

REFERENCE_VERSION = "2"  # 2: rotary positions (the shared Transformer default)
REFERENCE_SEED = 0


class ReferenceAR(Method):
    """A causal transformer language model with a BOS token (internal; not a registered method)."""

    name = "reference-ar"
    family = "autoregressive"
    paper = "1706.03762"
    title = "gmbench reference autoregressive model for generative perplexity"
    modalities = ("text",)
    samplers = (SamplerInfo("ancestral", adjustable_nfe=False, default_nfe=1),)
    likelihood = "exact"
    lr = 1e-3

    def __init__(self, data, model_size: str = "small"):
        super().__init__(data, model_size)
        from gmbench.backbones import Transformer

        self.vocab = data.vocab_size
        self.bos = data.vocab_size
        self.net = Transformer(self.vocab + 1, data.shape[0], out_dim=self.vocab, size=model_size, causal=True)

    def modules(self):
        return {"net": self.net}

    def stages(self):
        return [Stage("train", (OptimizerSpec("adam", ("net",), lr=self.lr, grad_clip=1.0),))]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        bos = torch.full((x.shape[0], 1), self.bos, dtype=torch.long, device=x.device)
        return self.net(torch.cat([bos, x[:, :-1].long()], dim=1))

    def training_step(self, stage, batch, step):
        logits = self._logits(batch)
        return {"adam": F.cross_entropy(logits.reshape(-1, self.vocab), batch.reshape(-1).long())}

    def token_nll(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Per-sequence NLL in nats, float64, shape (N,)."""
        out = []
        with torch.no_grad():
            for chunk in x.split(batch_size):
                chunk = chunk.to(self.device).long()
                logp = self._logits(chunk).double().log_softmax(-1)
                out.append(-logp.gather(-1, chunk[..., None]).squeeze(-1).sum(1).cpu())
        return torch.cat(out)

    def log_likelihood(self, x, generator=None):
        return -self.token_nll(x)

    def sample(self, n, sampler, nfe, generator):
        x = torch.zeros(n, 0, dtype=torch.long, device=self.device)
        with torch.no_grad():
            for _ in range(self.data.shape[0]):
                pad = torch.zeros(n, 1, dtype=torch.long, device=self.device)  # the slot being predicted
                probs = self._logits(torch.cat([x, pad], dim=1))[:, -1].double().softmax(-1)
                x = torch.cat([x, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return x


def reference_key(ctx: EvalContext) -> dict:
    """Everything the reference model depends on (its cache key and fingerprint)."""
    budget = ctx.budget
    if budget is None:
        raise MetricError("generative perplexity needs the run's budget (EvalContext.budget)")
    return {
        "model": "causal transformer, BOS + next-character cross-entropy",
        "version": REFERENCE_VERSION,
        "lr": ReferenceAR.lr,
        "seed": int(ctx.options.get("reference_seed", REFERENCE_SEED)),
        "dataset": ctx.dataset.fingerprint_fields(),
        "budget": budget.fingerprint_fields("text"),
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reference_model(ctx: EvalContext) -> tuple[ReferenceAR, dict]:
    """The cached reference model for ``ctx`` (trained and saved on first use) and its metadata."""
    key = reference_key(ctx)
    digest = _key_hash(key)

    def load_or_train():
        path = ctx.cache_path("reference_ar", f"{ctx.dataset.name}-{ctx.budget.name}-s{key['seed']}-{digest}.safetensors")
        cuda = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # seed the reference without touching the run's RNG streams
            torch.manual_seed(key["seed"])
            return _load_or_train(ctx, path, key["seed"], digest)

    return ctx.memoised(("reference_ar", digest), load_or_train)


def _load_or_train(ctx: EvalContext, path: Path, seed: int, digest: str) -> tuple[ReferenceAR, dict]:
    """Load the cached reference, or train it once into the cache.

    One process trains at a time (an flock beside the file; others wait and
    then load). Training checkpoints go beside it, so a run killed while
    training the reference leaves work the next run continues. A failure is
    cached with its reason (``<name>.failed.json``) and re-raised by later
    runs until the user deletes that file, instead of failing slowly each time.
    """
    import fcntl

    failed = path.with_suffix(".failed.json")
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        if failed.is_file():
            reason = json.loads(failed.read_text()).get("error", "unknown error")
            raise MetricError(f"the reference language model could not be built before ({reason}); "
                              f"delete {failed} to try again")
        model = ReferenceAR(ctx.dataset.spec(), model_size=ctx.budget.model_size).to(ctx.device)
        if path.is_file():
            meta = _load(model, path, ctx.device)
        else:
            try:
                meta = _train_reference(ctx, model, path, seed, digest)
            except MetricError:
                raise
            except OSError as exc:  # the environment (a deleted working directory, a full disk): not cached
                from gmbench.evaluate import one_line

                raise MetricError(f"the reference language model could not be built: {one_line(exc)}") from None
            except Exception as exc:  # noqa: BLE001 - cached, so every later run says why at once
                from gmbench.evaluate import one_line

                failed.write_text(json.dumps({"error": one_line(exc), "key": digest}))
                raise MetricError(f"the reference language model could not be built: {one_line(exc)}") from None
    model.train(False)
    return model, meta


def _load(model: ReferenceAR, path: Path, device) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    model.load_state_dict(load_file(str(path), device=str(device)))
    meta["cached"] = "true"
    return meta


def _train_reference(ctx: EvalContext, model: ReferenceAR, path: Path, seed: int, digest: str) -> dict:
    from safetensors.torch import save_file

    from gmbench import checkpointing
    from gmbench.checkpointing import CheckpointPolicy
    from gmbench.training import train

    folder = path.with_suffix(".checkpoint")
    t0 = time.perf_counter()
    stages = train(model, ctx.dataset.split("train").x, ctx.budget, "text", torch.Generator().manual_seed(seed),
                   checkpoints=CheckpointPolicy(folder, resume=True))
    stopped = next((s.stopped for s in stages if s.stopped), "")
    if stopped:  # not cached as finished: the next run continues it from its checkpoint
        raise MetricError(f"the reference language model is not trained yet ({stopped}); the next run continues it")
    meta = {
        "key": digest,
        "steps": str(sum(s.steps for s in stages)),
        "flops": str(sum(s.flops for s in stages)),
        "train_seconds": f"{time.perf_counter() - t0:.2f}",
        "device": str(ctx.device),
    }
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic
    checkpointing.remove(folder)
    meta["cached"] = "false"
    return meta


class GenerativePerplexity(Metric):
    name = "gen_ppl"
    version = "1"
    modalities = ("text",)
    description = "perplexity of samples under gmbench's reference AR model trained under the same budget"
    outputs = (
        MetricOutput("gen_ppl", "lower", "exp(mean NLL per character) under the reference AR model (read with the guards)"),
        MetricOutput("gen_ppl_gap", "lower", "|ln gen_ppl - ln ppl of test windows| under the same reference", "nats/char"),
    )

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        key = reference_key(ctx)
        return {"reference": {k: key[k] for k in ("model", "version", "lr", "seed")}, "reference_key": _key_hash(key)}

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        model, _ = reference_model(ctx)
        chars = samples.shape[1]
        real_nll = ctx.memoised(("gen_ppl_real",), lambda: float(model.token_nll(ctx.test).mean()) / ctx.test.shape[1])
        nll = float(model.token_nll(samples).mean()) / chars
        return {"gen_ppl": math.exp(nll), "gen_ppl_gap": abs(nll - real_nll)}


class GPT2Perplexity(Metric):
    name = "gen_ppl_gpt2"
    version = "1"
    modalities = ("text",)
    description = "generative perplexity under a local GPT-2 (transformers), per GPT-2 token"
    outputs = (MetricOutput("gen_ppl_gpt2", "lower", "exp(mean NLL per GPT-2 token) of decoded samples, float32"),)

    def weights(self, ctx: EvalContext) -> Path:
        given = ctx.options.get("gpt2_weights") or os.environ.get("GMBENCH_GPT2_WEIGHTS")
        if not given:
            raise MetricSkipped("GPT-2 perplexity skipped: set GMBENCH_GPT2_WEIGHTS (or the gpt2_weights option) to a local model folder")
        if not Path(given).is_dir():
            raise MetricSkipped(f"GPT-2 perplexity skipped: {given} is not a folder")
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise MetricSkipped("GPT-2 perplexity skipped: the transformers package is not installed") from None
        return Path(given)

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        try:
            path = self.weights(ctx)
        except MetricSkipped as exc:
            return {"available": False, "why": str(exc)}
        cfg = path / "config.json"
        return {"model_dir": path.name, "config_sha256": hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.is_file() else None}

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        path = self.weights(ctx)
        decode = getattr(ctx.dataset, "decode", None)
        if decode is None:
            raise MetricSkipped(f"GPT-2 perplexity skipped: dataset {ctx.dataset.name!r} cannot decode ids to text")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        def load():
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            lm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, torch_dtype=torch.float32)
            return tok, lm.to(ctx.device).eval()

        tok, lm = ctx.memoised(("gpt2", str(path)), load)
        total_nll, total_tokens = 0.0, 0
        with torch.no_grad():
            for text in decode(samples.cpu()):
                ids = tok(text, return_tensors="pt").input_ids.to(ctx.device)
                if ids.shape[1] < 2:
                    continue
                loss = lm(ids, labels=ids).loss  # mean over ids.shape[1] - 1 predictions
                total_nll += float(loss) * (ids.shape[1] - 1)
                total_tokens += ids.shape[1] - 1
        if not total_tokens:
            raise MetricError("no sample had two GPT-2 tokens")
        return {"gen_ppl_gpt2": math.exp(total_nll / total_tokens)}
