"""Test-split likelihood, unified across methods and modalities.

Methods return per-example log-likelihoods (or lower bounds) in nats; this
metric converts them to a comparable unit and labels them exact or bound:

* toy2d: ``test_nll`` in nats per example (continuous density);
* image: ``test_bpd``, bits per dimension of the *discrete* pixels, using
  uniform dequantisation (Theis et al. 2016, arXiv 1511.01844): each pixel is
  moved uniformly within its quantisation bin of width ``delta`` and
  ``bpd = (-log p(x + u) - D log delta) / (D ln 2)``, an upper bound on the
  discrete model's code length;
* text: ``test_bpc``, bits per character; where the dataset knows its true
  law (synthlang) also ``test_bpc_gap``, the excess over the true source's own
  code length for the *same* test windows (0 for a perfect model), and
  ``entropy_rate_gap_bpc``, the excess over the source's entropy rate (the
  asymptotic floor; short windows that start mid-word cost a perfect model a
  little more than the rate, so this gap stays slightly positive even then).

Every value carries the method's label (``exact``, ``bound`` or ``estimate``):
a bound's gap is a bound too. The unified value's entry also carries
``stderr``, the standard error of the mean over the test examples (for an
``estimate`` it includes the estimator's own noise, since each example's value
is one unbiased draw); boards print estimates as ``≈ value ± stderr``. The
likelihood stops between batches once it passes its share of the evaluation
cap (``EvalContext.deadline``) and is recorded as not evaluated, with why. ``max_examples`` test examples are used (the first ones of
the fixed test split), with dequantisation noise from a generator seeded by
the run's seed.
"""

from __future__ import annotations

import math

import torch

from gmbench.metrics.base import EvalContext, Metric, MetricError, MetricOutput, MetricSkipped

UNIT = {"toy2d": "test_nll", "image": "test_bpd", "text": "test_bpc"}
#: key of the standard error that ``score_model`` returns beside the value; the evaluator
#: moves it into the unified likelihood entry's ``stderr`` (not a metric output of its own)
STDERR = "_stderr"


class HeldOutLikelihood(Metric):
    name = "likelihood"
    version = "2"
    kind = "model"
    likelihood_values = True
    modalities = ("toy2d", "image", "text")
    description = "test-split negative log-likelihood (exact or a bound, as the method labels it)"
    outputs = (
        MetricOutput("test_nll", "lower", "toy2d: negative log-likelihood of test points", "nats"),
        MetricOutput("test_bpd", "lower", "images: bits per dimension, uniformly dequantised", "bits/dim"),
        MetricOutput("test_bpc", "lower", "text: bits per character", "bits/char"),
        MetricOutput("test_bpc_gap", "lower", "text: test_bpc minus the true source's bits/char on the same windows", "bits/char"),
        MetricOutput("entropy_rate_gap_bpc", "lower", "text: test_bpc minus the true source's entropy rate", "bits/char"),
    )
    max_examples = 2000
    batch_size = 500

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        spec = ctx.dataset.spec()
        fields = {"split": "test", "max_examples": self.max_examples}
        if spec.modality == "image":
            fields.update(dequantisation="uniform", levels=spec.levels, value_range=list(spec.value_range))
        return fields

    def score_model(self, method, ctx: EvalContext) -> dict:
        if method.likelihood == "none":
            raise MetricSkipped(f"method {method.name!r} has no likelihood (likelihood='none')")
        spec = ctx.dataset.spec()
        x = ctx.test[: self.max_examples].to(ctx.device)
        g = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 7919)
        delta = None
        if spec.modality == "image":
            lo, hi = spec.value_range
            delta = (hi - lo) / (spec.levels - 1)
        import time

        values = []
        with torch.no_grad():
            for i, chunk in enumerate(x.split(self.batch_size)):
                if ctx.deadline is not None and i and time.monotonic() > ctx.deadline:
                    raise MetricSkipped(
                        f"not evaluated: the likelihood used up its share of the evaluation cap after "
                        f"{i * self.batch_size} of {len(x)} test examples (raise GMBENCH_CAP_SCALE or the budget's eval cap)")
                if delta is not None:  # uniform dequantisation within each pixel's bin
                    u = torch.rand(chunk.shape, generator=g, device=chunk.device)
                    chunk = chunk + (u - 0.5) * delta
                ll = method.log_likelihood(chunk, g).double()
                if ll.shape != (chunk.shape[0],):
                    raise ValueError(f"log_likelihood returned shape {tuple(ll.shape)}, expected ({chunk.shape[0]},)")
                if not torch.isfinite(ll).all():
                    raise ValueError("log_likelihood returned NaN or inf")
                values.append(ll)
        ll = torch.cat(values)
        _require_possible(ll, x, ctx, spec)
        nll = -float(ll.mean())
        # standard error of the mean over test examples, in the reported unit
        stderr = float(ll.std()) / math.sqrt(len(ll)) if len(ll) > 1 else None
        dims = spec.dims
        if spec.modality == "toy2d":
            return {"test_nll": nll, STDERR: stderr}
        if spec.modality == "image":
            return {"test_bpd": (nll - dims * math.log(delta)) / (dims * math.log(2)),
                    STDERR: None if stderr is None else stderr / (dims * math.log(2))}
        bpc = nll / (dims * math.log(2))
        out = {"test_bpc": bpc, STDERR: None if stderr is None else stderr / (dims * math.log(2))}
        rate = ctx.dataset.entropy_rate_bits()
        if rate is not None:
            true_logp = ctx.dataset.log_prob(x.cpu())
            out["test_bpc_gap"] = bpc - float(-true_logp.double().mean()) / (dims * math.log(2))
            out["entropy_rate_gap_bpc"] = bpc - rate
        return out


#: how far (nats per dimension, beyond 4 standard errors) a likelihood may sit below the data's
#: own log-density on the same examples before it is rejected: room for ODE solver error
POSSIBLE_TOL_NATS_PER_DIM = 0.01


def _require_possible(ll: torch.Tensor, x: torch.Tensor, ctx: EvalContext, spec) -> None:
    """Where the dataset knows its own log-density (toy2d, synthlang), no exact likelihood, bound
    or unbiased estimate can beat it on average (Gibbs' inequality: the mean of
    ``log p(x) - log q(x)`` over test examples estimates KL(p || q) >= 0). A mean that is below
    it beyond 4 standard errors of the paired difference (and a small solver tolerance) is
    rejected: the method's ``log_likelihood`` is wrong, or it saw the test examples."""
    true = ctx.dataset.log_prob(x.cpu()) if spec.modality != "image" else None
    if true is None:
        return
    d = true.double().reshape(-1) - ll.cpu()  # log p - log q per example
    se = float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    if float(d.mean()) < -(4 * se + POSSIBLE_TOL_NATS_PER_DIM * spec.dims):
        raise MetricError(
            f"log_likelihood is {-float(d.mean()):.4g} nats per example above the data's own log-density on the same "
            f"test examples (standard error {se:.2g}); no exact likelihood, bound or unbiased estimate can be: "
            "the method's log_likelihood is wrong")
