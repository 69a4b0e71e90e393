"""What ``realnvp`` and ``glow`` share as gmbench methods: maximum likelihood on the exact
change-of-variables density, one inverse pass per sample, and dequantised image training.

A flow module maps data ``x`` (the data's own space: toy2d points, or dequantised pixels in
the data's value range) to a latent ``eps`` of shape ``(N, D)`` with ``eps ~ N(0, I)`` under
the model, ``forward(x) -> (eps, logdet)``, and back, ``forward(eps, reverse=True) -> x``.
Its log-density is exact (change of variables, RealNVP Eq. 3)::

    log p(x) = log N(eps; 0, I) + log |det d eps / d x|

including the pre-processing (logit or rescaling) of images, so ``log_likelihood`` is the
density of dequantised pixels in the data's value range and the host's
``bpd = (-log p(x + u) - D log delta) / (D ln 2)`` is the code length of the *discrete*
pixels (an upper bound, Theis et al. arXiv 1511.01844). Training minimises
``-log p(x + u) / D`` (nats per dimension) with fresh uniform dequantisation noise ``u``
within each pixel's bin, the objective the metric scores.

Sampling draws ``eps ~ N(0, T^2 I)`` (``T`` = the sampler's ``temperature``, 1 unless its
``SamplerInfo.params`` say otherwise) and makes one inverse pass of the flow module: NFE 1,
counted by the host as one forward call of ``flow``. Images are clamped to the data range.
"""

from __future__ import annotations

import torch
from torch import nn

from gmbench.method import Method, MethodError, OptimizerSpec, Stage

from .layers import ActNorm, data_init, dequantise, standard_normal_log_prob


class FlowMethod(Method):
    """Base of the normalising-flow methods (see module doc). Subclasses set ``self.flow``."""

    family = "flows"
    likelihood = "exact"
    modalities = ("toy2d", "image")

    def __init__(self, data, model_size: str, lr: float, warmup_steps: int, grad_clip: float | None,
                 init_examples: int) -> None:
        super().__init__(data, model_size)
        if not lr > 0:
            raise MethodError(f"{self.name}: lr must be > 0, not {lr!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise MethodError(f"{self.name}: warmup_steps must be an integer >= 0, not {warmup_steps!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise MethodError(f"{self.name}: grad_clip must be > 0 or None, not {grad_clip!r}")
        if isinstance(init_examples, bool) or not isinstance(init_examples, int) or init_examples < 1:
            raise MethodError(f"{self.name}: init_examples must be a positive integer, not {init_examples!r}")
        self.lr, self.warmup_steps, self.grad_clip, self.init_examples = lr, warmup_steps, grad_clip, init_examples
        self.bin_width = None
        if data.modality == "image":
            if not data.levels or not data.value_range:
                raise MethodError(f"{self.name}: image data needs quantisation levels and a value range")
            lo, hi = data.value_range
            self.bin_width = (hi - lo) / (data.levels - 1)
        self.flow: nn.Module

    # -- networks and training -----------------------------------------------------------------

    def modules(self) -> dict[str, nn.Module]:
        return {"flow": self.flow}

    def stages(self) -> list[Stage]:
        adam = OptimizerSpec("adam", ("flow",), lr=self.lr, grad_clip=self.grad_clip, warmup_steps=self.warmup_steps)
        return [Stage("train", (adam,))]

    def _dequantised(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x if self.bin_width is None else dequantise(x, self.bin_width, generator)

    def on_stage_start(self, stage: str, train_x: torch.Tensor, generator: torch.Generator):
        """Data-dependent initialisation of every actnorm layer (Glow Sec. 3.1) from one
        batch of ``init_examples`` training examples, drawn with the run's generator and
        dequantised like a training batch; metered against the stage by the host."""
        if not any(isinstance(m, ActNorm) and not bool(m.initialized) for m in self.flow.modules()):
            return None
        idx = torch.randint(0, train_x.shape[0], (min(self.init_examples, train_x.shape[0]),), generator=generator)
        batch = self._dequantised(train_x[idx.to(train_x.device)].cpu(), generator)  # the generator is on the CPU
        with torch.no_grad(), data_init():
            self.flow(batch.to(self.device))
        return None

    def training_step(self, stage: str, batch: torch.Tensor, step: int):
        x = self._dequantised(self.checked_input(batch))
        return {"adam": -self.log_prob(x).mean() / self.data.dims}

    # -- likelihood and sampling ----------------------------------------------------------------

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` per example in nats (change of variables; module doc)."""
        eps, logdet = self.flow(x)
        return standard_normal_log_prob(eps) + logdet

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Exact log-density of ``x`` (dequantised pixels in the data range, or toy2d points)."""
        return self.log_prob(self.checked_input(x))

    @torch.no_grad()
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        info = self.sampler(sampler)  # unknown names raise with a suggestion
        temperature = float(info.params.get("temperature", 1.0))
        eps = torch.randn(n, self.data.dims, generator=generator, device=self.device) * temperature
        x = self.flow(eps, reverse=True).reshape(n, *self.data.shape)
        if self.data.modality == "image":
            x = x.clamp(*self.data.value_range)
        return x
