"""Image feature extractors for FID-style metrics: the contract and the built-ins.

An extractor is registered twice, on purpose:

* with gmbench, through the ``gmbench_register_feature_extractors`` hook, as an
  :class:`ImageFeatureExtractor` instance — that is how the image metrics find
  it, know where its weights are, and put its name and weights hash into the
  record's fingerprint;
* with torch-fidelity (``torch_fidelity.register_feature_extractor``), under
  the same name, as a ``FeatureExtractorBase`` subclass — that is what
  ``torch_fidelity.calculate_metrics`` runs. This happens lazily, on first use,
  so importing gmbench registers nothing.

A third-party extractor subclasses :class:`ImageFeatureExtractor` and sets
``name``, ``fidelity_class`` (its ``FeatureExtractorBase`` subclass, whose
constructor receives ``feature_extractor_weights_path``; return it from
``fidelity_class()``) and implements ``weights_path``. The metric picks it with the ``feature_extractor`` option.

Built-ins:

* ``gmbench-cnn`` — the small classifier of :mod:`gmbench.metrics.classifier`,
  trained per dataset; weights ``<dataset>-cnn.safetensors`` in the folder of
  the ``extractor_weights_dir`` option, ``$GMBENCH_EXTRACTOR_WEIGHTS_DIR`` or
  ``gmbench/metrics/weights/`` (committed for digits).
* ``gmbench-inception-v3`` — torch-fidelity's Inception-v3 (the standard FID
  network, TF-compatible resize to 299x299), used only when its weights are on
  disk: the ``inception_weights`` option, ``$GMBENCH_INCEPTION_WEIGHTS``, or
  torch-fidelity's file in the torch hub cache. gmbench never downloads it.
  The file is a pickled state dict; it is first loaded with
  ``torch.load(weights_only=True)``, which refuses anything but tensors, before
  torch-fidelity loads it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch

from gmbench.metrics.base import EvalContext, MetricError, MetricSkipped
from gmbench.metrics.classifier import to_uint8
from gmbench.records import sha256_file

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity 0.2+ release asset


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, hashed once per (path, size, mtime) in a process."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)


class ImageFeatureExtractor:
    """What gmbench knows about an image feature extractor (registered instances)."""

    #: gmbench and torch-fidelity registry name
    name: ClassVar[str]
    #: human label for records and docs
    label: ClassVar[str] = ""

    def fidelity_class(self) -> type:
        """The torch-fidelity ``FeatureExtractorBase`` subclass ``calculate_metrics`` runs
        (imported here, so that registering gmbench's plugins never imports torch-fidelity)."""
        raise NotImplementedError

    def weights_path(self, ctx: EvalContext) -> Path:
        """The weights for ``ctx.dataset``; raise :class:`MetricSkipped` saying how to get them."""
        raise NotImplementedError

    def to_input(self, images: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
        """Float images ``(N, C, H, W)`` -> what ``fidelity_class.forward`` takes (default: uint8)."""
        return to_uint8(images, value_range)

    def fingerprint(self, ctx: EvalContext) -> dict:
        path = self.weights_path(ctx)
        return {"extractor": self.name, "weights": path.name, "weights_sha256": weights_sha256(path)}

    def register_with_torch_fidelity(self) -> None:
        """Idempotent; refuses a different class already registered under the name."""
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

        cls = self.fidelity_class()
        have = FEATURE_EXTRACTORS_REGISTRY.get(self.name)
        if have is None:
            register_feature_extractor(self.name, cls)
        elif have is not cls:
            raise ValueError(f"torch-fidelity already has a different feature extractor named {self.name!r}")


class ClassifierExtractor(ImageFeatureExtractor):
    name = "gmbench-cnn"
    label = "gmbench small classifier trained on the dataset's train split"

    def fidelity_class(self) -> type:
        from gmbench.metrics.fidelity_nets import ClassifierFidelityExtractor

        return ClassifierFidelityExtractor

    def weights_dirs(self, ctx: EvalContext) -> list[Path]:
        dirs = [ctx.options.get("extractor_weights_dir"), os.environ.get("GMBENCH_EXTRACTOR_WEIGHTS_DIR"), PACKAGE_WEIGHTS]
        return [Path(d) for d in dirs if d]

    def weights_path(self, ctx: EvalContext) -> Path:
        fname = f"{ctx.dataset.name}-cnn.safetensors"
        for d in self.weights_dirs(ctx):
            if (d / fname).is_file():
                return d / fname
        raise MetricSkipped(
            f"no {self.name} weights for dataset {ctx.dataset.name!r} ({fname}): "
            f"run `python scripts/train_feature_extractor.py --dataset {ctx.dataset.name}`"
        )


class InceptionExtractor(ImageFeatureExtractor):
    name = "gmbench-inception-v3"
    label = "Inception-v3 (torch-fidelity, TF-FID compatible), standard FID"

    def fidelity_class(self) -> type:
        from gmbench.metrics.fidelity_nets import SafeInceptionV3

        return SafeInceptionV3

    def weights_path(self, ctx: EvalContext) -> Path:
        given = ctx.options.get("inception_weights") or os.environ.get("GMBENCH_INCEPTION_WEIGHTS")
        if given:
            if not Path(given).is_file():  # asked for and missing: an error, not a skip
                raise MetricError(f"Inception weights {given} (inception_weights / GMBENCH_INCEPTION_WEIGHTS) do not exist")
            return Path(given)
        hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if hub.is_file():
            return hub
        raise MetricSkipped(
            "standard Inception FID skipped: no Inception weights on disk (set GMBENCH_INCEPTION_WEIGHTS "
            f"or the inception_weights option to torch-fidelity's {INCEPTION_FILE})"
        )

    def to_input(self, images: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
        x = to_uint8(images, value_range)
        return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def builtin_extractors() -> dict[str, ImageFeatureExtractor]:
    return {e.name: e for e in (ClassifierExtractor(), InceptionExtractor())}
