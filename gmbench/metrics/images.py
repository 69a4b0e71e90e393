"""FID, KID, Inception Score and precision/recall through torch-fidelity.

One :class:`ImageFidelity` instance per feature extractor: ``image_fidelity``
(outputs ``fid``, ``kid``, ``isc``, ``precision``, ``recall``) uses the offline
default ``gmbench-cnn`` (or the extractor named by the ``feature_extractor``
option); ``image_fidelity_inception`` (outputs ``fid_inception``, ...) uses
Inception-v3 when its weights are on disk and is skipped with a note otherwise.

All the maths is torch-fidelity's ``calculate_metrics`` on two in-memory
datasets: input1 = the samples, input2 = the reference split. Both go through
the same conversion: clamp to the data range, scale to uint8 0..255 with
rounding, native resolution (the extractor resizes if it must: Inception to
299x299; gray images get three equal channels for Inception only).

Reference: the dataset's ``train`` split by default (CIFAR-10 FIDs in the
literature are against train statistics), all of it up to
``fid_reference_max`` (50,000) images; the ``fid_reference_split`` option
selects ``test``. Its features and FID statistics are cached by torch-fidelity
under ``<cache>/fidelity/``, named by dataset, split, count, a hash of the
dataset's fingerprint, extractor and weights hash, so a changed extractor or
dataset never reuses stale statistics. The cache holds torch-fidelity's own
``.pt`` files, which it loads with pickle: keep the cache folder private.
"""

from __future__ import annotations

import contextlib
import hashlib
import json

import torch
from torch.utils.data import Dataset as TorchDataset

from gmbench.metrics.base import EvalContext, Metric, MetricError, MetricOutput, MetricSkipped

DEFAULT_EXTRACTOR = "gmbench-cnn"
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
ISC_SPLITS = 10
PRC_NEIGHBORHOOD = 3
RNG_SEED = 2020  # torch-fidelity's default: fixes KID subsets and the IS shuffle
INPUT_RULE = "clamp to data range, uint8 round, native resolution"

_KEYS = {
    "fid": "frechet_inception_distance",
    "kid": "kernel_inception_distance_mean",
    "isc": "inception_score_mean",
    "precision": "precision",
    "recall": "recall",
}


class _Images(TorchDataset):
    """An in-memory tensor of images as the map-style dataset torch-fidelity reads."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


class ImageFidelity(Metric):
    """FID/KID/IS/precision/recall with one feature extractor (see module doc).

    Args:
        extractor: registered extractor name; ``None`` = the ``feature_extractor``
            option, else ``gmbench-cnn``.
        suffix: appended to the metric and output names (``"_inception"``).
    """

    version = "1"
    kind = "samples"
    modalities = ("image",)
    batch_size = 256

    def __init__(self, extractor: str | None = None, suffix: str = ""):
        self.extractor_name = extractor
        self.name = "image_fidelity" + suffix
        which = "Inception-v3" if suffix else "the dataset's feature extractor (default: gmbench-cnn)"
        self.description = f"FID, KID, Inception Score and precision/recall (torch-fidelity) with {which}"
        self.outputs = (
            MetricOutput("fid" + suffix, "lower", "Frechet distance of feature Gaussians, samples vs reference split"),
            MetricOutput("kid" + suffix, "lower", f"kernel (cubic polynomial) MMD^2, mean of {KID_SUBSETS} subsets"),
            MetricOutput("isc" + suffix, "higher", "Inception Score exp(E KL(p(y|x) || p(y))) of the samples"),
            MetricOutput("precision" + suffix, "higher", f"share of samples inside the reference manifold (k={PRC_NEIGHBORHOOD})", "fraction"),
            MetricOutput("recall" + suffix, "higher", f"share of reference images inside the samples' manifold (k={PRC_NEIGHBORHOOD})", "fraction"),
        )
        self.suffix = suffix

    # -- configuration -----------------------------------------------------------

    def extractor(self, ctx: EvalContext):
        from gmbench.metrics.extractors import builtin_extractors

        name = self.extractor_name or ctx.options.get("feature_extractor", DEFAULT_EXTRACTOR)
        known = ctx.extractors if ctx.extractors is not None else builtin_extractors()
        if name not in known:
            from gmbench.registry import did_you_mean

            raise MetricError(f"unknown feature extractor {name!r}.{did_you_mean(name, known)} Known: {', '.join(sorted(known))}")
        return known[name]

    def reference(self, ctx: EvalContext) -> tuple[str, torch.Tensor]:
        split = ctx.options.get("fid_reference_split", "train")
        x = ctx.dataset.split(split).x
        limit = int(ctx.options.get("fid_reference_max", 50000))
        if len(x) > limit:  # a fixed subset: the same for every run
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:limit]]
        return split, x

    def settings(self, ctx: EvalContext, n_ref: int) -> dict:
        return {
            "reference_split": ctx.options.get("fid_reference_split", "train"),
            "reference_n": n_ref,
            "n_samples": ctx.n_samples,
            "kid_subsets": KID_SUBSETS,
            "kid_subset_size": min(KID_SUBSET_SIZE, ctx.n_samples, n_ref),
            "isc_splits": ISC_SPLITS,
            "prc_neighborhood": PRC_NEIGHBORHOOD,
            "rng_seed": RNG_SEED,
            "input": INPUT_RULE,
            "torch_fidelity": _fidelity_version(),
        }

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        try:
            ext = self.extractor(ctx)
            fields = ext.fingerprint(ctx)
        except (MetricSkipped, MetricError) as exc:
            return {"available": False, "why": str(exc)}
        _, ref = self.reference(ctx)
        return {**fields, **self.settings(ctx, len(ref))}

    # -- scoring ---------------------------------------------------------------------

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        import torch_fidelity

        ext = self.extractor(ctx)
        weights = ext.weights_path(ctx)  # MetricSkipped when absent
        ext.register_with_torch_fidelity()
        spec = ctx.dataset.spec()
        split, ref = self.reference(ctx)
        if len(samples) < 2 or len(ref) < 2:
            raise MetricError(f"FID needs at least 2 samples and 2 reference images (got {len(samples)}, {len(ref)})")
        settings = self.settings(ctx, len(ref))
        settings["kid_subset_size"] = min(settings["kid_subset_size"], len(samples))
        fp = ext.fingerprint(ctx)
        ref_key = self._reference_key(ctx, split, len(ref), fp["weights_sha256"])
        cuda = ctx.device.type == "cuda"
        kwargs = dict(
            input1=_Images(ext.to_input(samples, spec.value_range)),
            input2=_Images(ctx.memoised(("fid_ref", ext.name, split, len(ref)), lambda: ext.to_input(ref, spec.value_range))),
            input2_cache_name=ref_key,
            cache_root=str(ctx.cache_path("fidelity", folder=True)),
            cache=True,
            fid=True, kid=True, isc=True, prc=True,
            feature_extractor=ext.name,
            feature_extractor_weights_path=str(weights),
            kid_subsets=KID_SUBSETS,
            kid_subset_size=settings["kid_subset_size"],
            isc_splits=ISC_SPLITS,
            prc_neighborhood=PRC_NEIGHBORHOOD,
            rng_seed=RNG_SEED,
            batch_size=self.batch_size,
            cuda=cuda,
            save_cpu_ram=True,  # no DataLoader worker processes for in-memory tensors
            verbose=False,
        )
        with torch.cuda.device(ctx.device) if cuda else contextlib.nullcontext():
            out = torch_fidelity.calculate_metrics(**kwargs)
        return {k + self.suffix: float(out[v]) for k, v in _KEYS.items()}

    @staticmethod
    def _reference_key(ctx: EvalContext, split: str, n: int, weights_sha: str) -> str:
        data = hashlib.sha256(json.dumps(ctx.dataset.fingerprint_fields(), sort_keys=True, default=str).encode()).hexdigest()
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in ctx.dataset.name)
        return f"gmbench-{safe}-{split}-n{n}-d{data[:12]}-w{weights_sha[:16]}"


def _fidelity_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:  # from the metadata: importing torch-fidelity (and torchvision) takes seconds
        return version("torch-fidelity")
    except PackageNotFoundError:  # not pip-installed (e.g. on PYTHONPATH)
        import torch_fidelity

        return getattr(torch_fidelity, "__version__", "?")
