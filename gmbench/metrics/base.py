"""The metric contract.

A :class:`Metric` is a named group of outputs computed together (FID, KID and
precision/recall share one feature pass, for instance). Each output has a
direction, so that leaderboards rank and ``gmbench compare`` gates without
knowing the metric. A metric is either

* ``kind = "samples"``: scores generated samples against the dataset (called
  once per sampler and NFE), or
* ``kind = "model"``: scores the trained method itself (test likelihood),
  called once per run.

Bump ``version`` whenever a change can move a number: it enters the record's
fingerprint, and records with different fingerprints are never compared.
Everything else a value depends on (sample counts, reference split, feature
extractor and the hash of its weights...) goes into ``fingerprint_fields``.

A metric that cannot run in this environment (no Inception weights, no GPT-2)
raises :class:`MetricSkipped`: the record gets a ``skipped`` note instead of a
value, and nothing fails. Samples it cannot score raise :class:`MetricError`.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import os
from pathlib import Path

import torch

if TYPE_CHECKING:
    from gmbench.budget import Budget
    from gmbench.data.base import Dataset
    from gmbench.method import Method

DIRECTIONS = ("lower", "higher")


class MetricError(ValueError):
    """Samples a metric cannot score (NaN, wrong shape or range); one-line message."""


class MetricSkipped(RuntimeError):
    """A metric that cannot run here (missing optional weights); the message says how to enable it."""


#: key of a metric's result dict for outputs it could not score while others stand:
#: ``{"psnr": 31.2, "rfid": None, SKIPPED_OUTPUTS: {"rfid": "why, and how to enable it"}}``;
#: the record keeps the reason beside the missing value, as for a skipped metric
SKIPPED_OUTPUTS = "_skipped"


@dataclass(frozen=True)
class MetricOutput:
    """One number a metric produces."""

    name: str
    direction: str
    description: str = ""
    unit: str = ""

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric output {self.name!r}: direction must be 'lower' or 'higher'")


@dataclass
class EvalContext:
    """What a metric may use besides the samples.

    Attributes:
        dataset: the run's dataset (its test split is the usual reference).
        n_samples: samples drawn per sampler and NFE.
        seed: the run's seed.
        device: where the method lives; metrics may compute there.
        cache_dir: on-disk cache root (reference statistics, the reference
            language model); ``None`` means ``$GMBENCH_CACHE_DIR`` or ``~/.cache/gmbench``.
        options: user options, e.g. ``inception_weights``, ``feature_extractor``,
            ``fid_reference_split`` (see docs/metrics.md).
        budget: the run's budget (the reference language model trains under it).
        extractors: image feature extractors by name, as registered through
            ``gmbench_register_feature_extractors`` (``None``: the built-ins).
        memo: per-evaluation scratch space, so a metric computes data-side
            statistics once per run rather than once per sampler and NFE.
        split: the held-out split samples are compared with: ``"test"`` (what
            boards report) or ``"val"`` (what the suite chooses settings on; see
            :meth:`for_split`). ``ctx.test`` is that split's examples.
        deadline: ``time.monotonic()`` value after which a long metric (the model's
            likelihood) should stop and raise :class:`MetricSkipped` (None: none).
    """

    dataset: "Dataset"
    n_samples: int
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache_dir: str | None = None
    options: dict = field(default_factory=dict)
    budget: "Budget | None" = None
    extractors: dict | None = None
    memo: dict = field(default_factory=dict)
    split: str = "test"
    deadline: float | None = None

    @property
    def test(self) -> torch.Tensor:
        """The held-out reference examples (the ``split`` this context scores against)."""
        return self.dataset.split(self.split).x

    def for_split(self, split: str) -> "EvalContext":
        """This context scoring against ``split``, with its own memo (data-side statistics
        differ per split); FID's reference becomes that split too."""
        from dataclasses import replace

        options = dict(self.options)
        if split != "test":
            options["fid_reference_split"] = split
        return replace(self, split=split, memo={}, options=options)

    def cache_path(self, *parts: str, folder: bool = False) -> Path:
        """A path under the cache root; its folder (or, with ``folder``, itself) is created."""
        root = self.cache_dir or os.environ.get("GMBENCH_CACHE_DIR") or os.path.join(Path.home(), ".cache", "gmbench")
        path = Path(root, *parts)
        (path if folder else path.parent).mkdir(parents=True, exist_ok=True)
        return path

    def memoised(self, key, compute):
        """``compute()`` once per evaluation for ``key``."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


class Metric(ABC):
    """Base class of every metric; register *instances*."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    modalities: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[MetricOutput, ...]]
    kind: ClassVar[str] = "samples"
    #: a model metric whose outputs are the method's likelihood (or its bound or estimate): the
    #: host labels its entries with the method's ``likelihood`` (exact / bound / estimate)
    likelihood_values: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def applies_to(self, dataset: "Dataset") -> bool:
        return dataset.modality in self.modalities

    def compute(self, ctx: EvalContext, samples: torch.Tensor | None = None, method: "Method | None" = None) -> dict:
        """Return ``{output_name: value}``; values are floats (or None if undefined; an output
        skipped for a reason names it under :data:`SKIPPED_OUTPUTS`).

        For ``kind="samples"`` ``samples`` is given; for ``kind="model"`` ``method``.
        """
        if self.kind == "samples":
            return self.score_samples(samples, ctx)
        return self.score_model(method, ctx)

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        raise NotImplementedError

    def score_model(self, method: "Method", ctx: EvalContext) -> dict:
        raise NotImplementedError

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        """Extra protocol fields that make this metric's values comparable."""
        return {}

    def output(self, name: str) -> MetricOutput:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)


def check_samples(samples: torch.Tensor, dataset: "Dataset") -> torch.Tensor:
    """Validate samples against the dataset spec; raise MetricError with one line."""
    spec = dataset.spec()
    if not isinstance(samples, torch.Tensor):
        raise MetricError(f"samples must be a torch.Tensor, got {type(samples).__name__}")
    if tuple(samples.shape[1:]) != tuple(spec.shape):
        raise MetricError(f"samples have shape {tuple(samples.shape)}, expected (n, {', '.join(map(str, spec.shape))})")
    if spec.modality == "text":
        if samples.dtype not in (torch.long, torch.int32, torch.int64):
            raise MetricError(f"text samples must be integer token ids, got {samples.dtype}")
        if samples.numel() and (samples.min() < 0 or samples.max() >= spec.vocab_size):
            raise MetricError(f"text samples hold ids outside 0..{spec.vocab_size - 1}")
        return samples
    if not torch.isfinite(samples).all():
        bad = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
        raise MetricError(f"{bad} of {len(samples)} samples contain NaN or inf")
    if spec.value_range is not None:
        lo, hi = spec.value_range
        margin = 0.5 * (hi - lo)  # generous: models overshoot a little, metrics clamp
        if samples.min() < lo - margin or samples.max() > hi + margin:
            raise MetricError(
                f"samples range [{samples.min():.3g}, {samples.max():.3g}] is far outside the data range [{lo}, {hi}]"
            )
    return samples
