"""Test-split likelihood, unified across methods and modalities.

Methods return per-example log-likelihoods (or lower bounds) in nats; this
metric converts them to a comparable unit and labels them exact or bound:

* toy2d: ``test_nll`` in nats per example (continuous density);
* image: ``test_bpd``, bits per dimension of the *discrete* pixels, using
  uniform dequantisation (Theis et al. 2016, arXiv 1511.01844): each pixel is
  moved uniformly within its quantisation bin of width ``delta`` and
  ``bpd = (-log p(x + u) - D log delta) / (D ln 2)``, an upper bound on the
  discrete model's code length;
* text: ``test_bpc``, bits per character.
"""

from __future__ import annotations

import math

import torch

from gmbench.metrics.base import EvalContext, Metric, MetricOutput

UNIT = {"toy2d": "test_nll", "image": "test_bpd", "text": "test_bpc"}


class HeldOutLikelihood(Metric):
    name = "likelihood"
    version = "1"
    kind = "model"
    modalities = ("toy2d", "image", "text")
    description = "test-split negative log-likelihood (exact or a bound, as the method labels it)"
    outputs = (
        MetricOutput("test_nll", "lower", "toy2d: negative log-likelihood of test points", "nats"),
        MetricOutput("test_bpd", "lower", "images: bits per dimension, uniformly dequantised", "bits/dim"),
        MetricOutput("test_bpc", "lower", "text: bits per character", "bits/char"),
    )
    max_examples = 2000
    batch_size = 500

    def score_model(self, method, ctx: EvalContext) -> dict:
        if method.likelihood == "none":
            return {}
        spec = ctx.dataset.spec()
        x = ctx.test[: self.max_examples].to(ctx.device)
        g = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 7919)
        delta = None
        if spec.modality == "image":
            lo, hi = spec.value_range
            delta = (hi - lo) / (spec.levels - 1)
        total = 0.0
        with torch.no_grad():
            for chunk in x.split(self.batch_size):
                if delta is not None:  # uniform dequantisation within each pixel's bin
                    u = torch.rand(chunk.shape, generator=g, device=chunk.device)
                    chunk = chunk + (u - 0.5) * delta
                ll = method.log_likelihood(chunk, g).double()
                if ll.shape != (chunk.shape[0],):
                    raise ValueError(f"log_likelihood returned shape {tuple(ll.shape)}, expected ({chunk.shape[0]},)")
                if not torch.isfinite(ll).all():
                    raise ValueError("log_likelihood returned NaN or inf")
                total += float(ll.sum())
        nll = -total / len(x)
        dims = spec.dims
        if spec.modality == "toy2d":
            return {"test_nll": nll}
        if spec.modality == "image":
            return {"test_bpd": (nll - dims * math.log(delta)) / (dims * math.log(2))}
        return {"test_bpc": nll / (dims * math.log(2))}
