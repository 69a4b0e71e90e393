"""The Method contract: what every method plugin implements.

The host owns training (loop, optimizers, gradient steps, FLOP and clock
metering); a method only builds its networks and supplies losses. Training is
a list of :class:`Stage` s. Each stage names its optimizers, and
``training_step`` returns one loss per optimizer, either

* as a mapping ``{optimizer_name: loss}`` — the host back-propagates and steps
  each in order, computed from the same parameters (simultaneous updates); or
* as a generator yielding ``(optimizer_name, loss)`` pairs — the host steps that
  optimizer before resuming the generator, so the next loss sees the updated
  parameters (a GAN's alternating discriminator/generator updates).

Two-stage methods (an autoencoder then a latent model; train, generate pairs,
retrain) declare several stages, each with a share of the training budget, and
may transform the training data at the start of a stage with
``on_stage_start`` — the host meters that work against the budget too.

Class-conditional methods (a method whose ``class_conditional`` is True, set from one of its
parameters on a labelled dataset) get the labels from the host: ``training_step(stage, batch,
step, labels=...)`` with the batch's labels, and ``sample(n, sampler, nfe, generator,
classes=...)`` with the classes to draw, which the host chooses
(:func:`gmbench.conditioning.evaluation_classes`: balanced over the dataset's classes, in an
order the generator shuffles). Boards mark such runs: their samples are conditional. Their
likelihood would be ``p(x|y)``, not comparable with ``p(x)``: they declare ``none``.

A minimal method::

    class MyMethod(Method):
        name, family, paper = "mine", "diffusion", "2006.11239"
        modalities = ("toy2d",)
        samplers = (SamplerInfo("euler", adjustable_nfe=True, deterministic=True),)

        def __init__(self, data, model_size="small"):
            super().__init__(data, model_size)
            self.net = MLP(2, 2, size=model_size)

        def modules(self):
            return {"net": self.net}

        def stages(self):
            return [Stage("main", (OptimizerSpec("opt", ("net",), lr=1e-3),))]

        def training_step(self, stage, batch, step):
            return {"opt": self.net(batch).pow(2).mean()}

        def sample(self, n, sampler, nfe, generator):
            ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Iterator, Mapping, Union

import torch
from torch import nn

from gmbench.data.base import DataSpec
from gmbench.errors import MethodError  # noqa: F401  (defined torch-free, for the CLI)

#: exact (flows, exact-trace ODEs, AR), bound (VAE, diffusion ELBOs), estimate (an unbiased
#: stochastic estimate such as Hutchinson's trace: reported with its standard error), none (GANs)
LIKELIHOOD_KINDS = ("exact", "bound", "estimate", "none")

StepResult = Union[Mapping[str, torch.Tensor], Iterator[tuple[str, torch.Tensor]]]




@dataclass(frozen=True)
class SamplerInfo:
    """A named sampler of a method.

    Attributes:
        name: e.g. ``"ancestral"``, ``"ddim"``, ``"euler"``.
        adjustable_nfe: whether the number of function evaluations can be set;
            if False the host samples once at ``default_nfe``.
        deterministic: True when the map from initial noise to sample is
            deterministic (ODE samplers, DDIM with eta=0).
        default_nfe: NFE used when ``adjustable_nfe`` is False (and as a hint).
        calls_per_step: network forward calls per unit of NFE and per sample (2 for
            Heun or midpoint steps, a predictor-corrector step...). The host counts
            the forward calls of the method's modules while sampling one sample
            and fails the run if they exceed ``nfe * calls_per_step``.
        adaptive: an adaptive solver (dopri5...): NFE is what it used, which the
            host records as counted; no declared count is checked.
        params: the sampler's fixed parameters (``{"eta": 1.0}``, ``{"temperature": 0.7}``).
            A method offers a published variant of one sampler as its own named
            sampler with its parameters here (``ddim`` with eta 0 beside
            ``ddim-eta1``), reads them back in ``sample`` through
            ``self.sampler(name).params``, and the host records them beside every
            metric of that sampler: same weights, no retraining.
    """

    name: str
    adjustable_nfe: bool = True
    deterministic: bool = False
    default_nfe: int = 1
    calls_per_step: float = 1.0
    adaptive: bool = False
    params: Mapping[str, Union[float, int, str]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer the host builds for a stage (Adam/AdamW).

    Attributes:
        name: key used in ``training_step``'s result.
        modules: names (keys of ``Method.modules()``) whose parameters it trains.
        lr, betas, weight_decay: Adam(W) hyper-parameters.
        grad_clip: clip the gradient norm of those parameters, if set.
        warmup_steps: linear learning-rate warm-up over this many steps.
    """

    name: str
    modules: tuple[str, ...]
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    warmup_steps: int = 0


@dataclass(frozen=True)
class Stage:
    """One phase of training with its optimizers and its share of the budget."""

    name: str
    optimizers: tuple[OptimizerSpec, ...]
    budget_share: float = 1.0


class Method(ABC):
    """Base class of every generative method.

    Class attributes a subclass must set: ``name``, ``family``, ``paper``
    (arXiv id), ``modalities``, ``samplers``, ``likelihood``. Hyper-parameters
    are keyword arguments of ``__init__`` with defaults (the host passes the
    :class:`DataSpec` and the budget's model-size preset).
    """

    name: ClassVar[str]
    family: ClassVar[str]
    paper: ClassVar[str]
    title: ClassVar[str] = ""
    modalities: ClassVar[tuple[str, ...]]
    samplers: ClassVar[tuple[SamplerInfo, ...]]
    #: "exact" (flows, ODEs, AR), "bound" (VAE, diffusion), "estimate" (unbiased, stochastic) or "none" (GAN)
    likelihood: ClassVar[str] = "none"
    #: set by the host before training: each stage's FLOP allowance and the evaluation settings
    budget_view = None
    #: method-specific metrics (``gmbench.metrics.base.Metric`` instances, usually of kind
    #: ``model``) the host scores after the shared ones on data of their modalities, e.g. an
    #: autoencoder's reconstruction quality or rectified flow's straightness. Register them
    #: too (``gmbench_register_metrics``) so that boards and claims know their directions;
    #: their ``applies_to`` should be False so that they stay out of every other run. They are
    #: not part of the protocol fingerprint: the record lists them under ``method_metrics``.
    extra_metrics: ClassVar[tuple] = ()
    #: True on an instance trained and sampled given class labels (module doc); the host then
    #: passes ``labels=`` to ``training_step`` and ``classes=`` to ``sample``
    class_conditional: bool = False

    def __init__(self, data: DataSpec, model_size: str = "small"):
        if data.modality not in self.modalities:
            raise MethodError(
                f"method {self.name!r} does not support {data.modality!r} data "
                f"(it supports {', '.join(self.modalities)})"
            )
        self.data = data
        self.model_size = model_size
        self.device = torch.device("cpu")

    # -- networks ---------------------------------------------------------------

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every network of the method, by name (for optimizers, checkpoints, devices)."""

    def to(self, device: torch.device | str) -> "Method":
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        return self

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)

    def num_parameters(self) -> int:
        seen: set[int] = set()
        total = 0
        for m in self.modules().values():
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total

    def backbone(self) -> str:
        """The networks this method trains, in words, for boards that hold the network fixed.

        ``"Family(size, params)"``, e.g. ``"UNet(small, 1.42M)"``; ``", k nets"`` is added
        when ``k`` networks are trained (``"MLP(small, 0.502M, 2 nets)"``: a VAE's encoder
        and decoder). The run record stores it; boards show it and read the *family* as the
        text before ``(`` (``gmbench leaderboard --same-backbone`` or ``--backbone unet``).
        Default: the class names of the modules some optimizer of :meth:`stages` trains
        (a shadow copy no optimizer names, such as an EMA, is left out), joined by ``+``
        when they differ, and their parameters. Override it when a module wraps a shared
        backbone (``gmbench.backbones``) under another class name.
        """
        trained = {name for stage in self.stages() for opt in stage.optimizers for name in opt.modules}
        nets = [m for name, m in self.modules().items() if name in trained]
        family = "+".join(sorted({type(m).__name__ for m in nets})) or "none"
        params = sum(p.numel() for p in {id(p): p for m in nets for p in m.parameters()}.values())
        return backbone_label(family, self.model_size, params, len(nets))

    # -- training -----------------------------------------------------------------

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The training stages, in order; their ``budget_share`` s sum to 1."""

    @abstractmethod
    def training_step(self, stage: str, batch: torch.Tensor, step: int) -> StepResult:
        """Losses for one gradient step of ``stage`` on ``batch`` (see module doc).

        A class-conditional method (``class_conditional``) is called with ``labels=``, the
        batch's integer labels of shape ``(batch,)``, as a keyword argument."""

    def on_stage_start(self, stage: str, train_x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """Called before a stage's first step; may return new training data.

        E.g. a latent model encodes the data with its trained autoencoder, and
        rectified flow's reflow generates (noise, sample) pairs. The host counts
        the FLOPs spent here against the stage's allowance
        (``self.budget_view.stage_flops[stage]``) while they are spent, and stops
        the run with a clear error once they pass it: size the work from it.
        """
        return None

    def stage_notes(self, stage: str) -> dict:
        """JSON-able facts about how ``stage`` was prepared, kept in the record's
        ``train.stages[*].notes`` (asked right after ``on_stage_start``; a resumed stage keeps
        the answer its first process gave), e.g. how many reflow pairs the stage's allowance
        paid for. Default: none."""
        return {}

    def stage_end_notes(self, stage: str) -> dict:
        """JSON-able facts that accumulate over ``stage``'s steps, asked when they end and merged
        into :meth:`stage_notes`' answer (their keys win), e.g. the wall time of CPU work the FLOP
        meter cannot see. A resumed stage is asked too, in a process where ``on_stage_start``
        did not run: keep such totals in :meth:`training_state` so they cover every step, and
        give ``None`` for a total the checkpoint did not carry. Default: none."""
        return {}

    def on_step_end(self, stage: str, step: int) -> None:
        """Called after every optimizer of a step has stepped (e.g. EMA updates); metered."""

    def training_state(self) -> dict:
        """JSON-able state a method changes while training outside its modules (e.g. a
        latent scale set in ``on_stage_start``), saved in training checkpoints. State
        in module parameters and buffers is saved already; default: none."""
        return {}

    def load_training_state(self, state: dict) -> None:
        """Restore what :meth:`training_state` returned (when resuming a run)."""

    # -- sampling and likelihood ------------------------------------------------

    @abstractmethod
    def sample(self, n: int, sampler: str, nfe: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` samples of shape ``(n, *data.shape)`` with sampler ``sampler`` at ``nfe`` steps.

        Images in the data's value range, text as token ids (long). All
        randomness must come from ``generator`` so that a seed fixes the samples.
        A class-conditional method is called with ``classes=``, the label of each of the
        ``n`` samples (a long tensor of shape ``(n,)``), as a keyword argument.
        """

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-example log-likelihood (or its lower bound, see ``likelihood``) in nats.

        For continuous data this is the density of the (dequantised) data in
        the data's value range; the host converts nats to bits per dimension.
        """
        raise NotImplementedError(f"method {self.name!r} has no likelihood")

    def checked_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the method's device after checking it is a batch of the data's shape (the
        first thing a ``log_likelihood`` does); a clear error otherwise."""
        if tuple(x.shape[1:]) != tuple(self.data.shape):
            want = ", ".join(map(str, self.data.shape))
            raise MethodError(f"{self.name}: expected inputs of shape (n, {want}), got {tuple(x.shape)}")
        return x.to(self.device)

    def checked_sampler(self, name: str, nfe) -> SamplerInfo:
        """:meth:`sampler` plus the check that ``nfe`` is a positive integer (an adaptive
        solver chooses its own steps, so its ``nfe`` is not checked)."""
        info = self.sampler(name)
        if not info.adaptive and (isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1):
            raise MethodError(f"{self.name}: nfe must be a positive integer, got {nfe!r}")
        return info

    def sampler(self, name: str) -> SamplerInfo:
        for s in self.samplers:
            if s.name == name:
                return s
        from gmbench.registry import did_you_mean

        known = [s.name for s in self.samplers]
        raise MethodError(f"method {self.name!r} has no sampler {name!r}.{did_you_mean(name, known)} Known: {', '.join(known)}")

    # -- checkpoints --------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for mname, m in self.modules().items():
            for k, v in m.state_dict().items():
                out[f"{mname}.{k}"] = v
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for mname, m in self.modules().items():
            prefix = mname + "."
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                m.load_state_dict(sub, strict=True)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise MethodError(f"checkpoint does not fit method {self.name!r}, module {mname!r}: {first}") from None

    @classmethod
    def describe(cls) -> dict:
        return {
            "name": cls.name,
            "family": cls.family,
            "paper": cls.paper,
            "title": cls.title,
            "modalities": list(cls.modalities),
            "likelihood": cls.likelihood,
            "samplers": [
                {"name": s.name, "adjustable_nfe": s.adjustable_nfe, "deterministic": s.deterministic,
                 "calls_per_step": s.calls_per_step, "adaptive": s.adaptive}
                for s in cls.samplers
            ],
        }


def validate_method_class(cls: type) -> None:
    """Raise MethodError if a method class misses a required attribute."""
    for attr in ("name", "family", "paper", "modalities", "samplers"):
        if not getattr(cls, attr, None):
            raise MethodError(f"method class {cls.__name__} must set {attr!r}")
    if cls.likelihood not in LIKELIHOOD_KINDS:
        raise MethodError(f"method {cls.name!r}: likelihood must be one of {LIKELIHOOD_KINDS}, not {cls.likelihood!r}")


def backbone_label(family: str, size: str, params: int, nets: int = 1) -> str:
    """``"UNet(small, 1.42M)"`` / ``"MLP(small, 0.502M, 2 nets)"``: the form of
    :meth:`Method.backbone` (parameters in millions, 3 significant digits)."""
    more = f", {nets} nets" if nets > 1 else ""
    return f"{family}({size}, {params / 1e6:.3g}M{more})"
