"""The dataset contract: what a method and a metric may know about the data.

A dataset is a class registered through the ``gmbench_register_datasets`` hook.
Its splits are deterministic: they depend on the dataset's own ``data_seed``
(fixed, default 0), never on the run's seed, so every method and every seed of
a comparison sees the very same train, validation and test examples.

Three splits: ``train`` (what methods learn from), ``val`` (what the suite
*chooses* on: a method's sampler and NFE are picked by their validation
metric) and ``test`` (what boards report at the chosen setting). A dataset
that can draw fresh examples (toy2d, the synthetic language) overrides
:meth:`Dataset._load_val` with a fresh seeded draw; otherwise the validation
split is carved from the raw train split: a seeded ``val_fraction`` of it,
never seen in training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from gmbench.errors import DatasetUnavailableError  # noqa: F401  (defined torch-free, for the CLI)

MODALITIES = ("toy2d", "image", "text")

EMBEDDED_ALTERNATIVES = "toy2d datasets (8gaussians, checkerboard, moons, spirals, rings), digits, synthlang"




@dataclass(frozen=True)
class DataSpec:
    """What a method needs to build its networks for a dataset.

    Attributes:
        name: registry name of the dataset.
        modality: one of ``MODALITIES``.
        shape: shape of one example: ``(2,)`` for toy2d, ``(C, H, W)`` for
            images, ``(L,)`` for text (token ids).
        vocab_size: number of token ids for text (ids are ``0..vocab_size-1``).
        levels: number of quantisation levels per pixel for images (digits: 17),
            used to dequantise for bits per dimension.
        value_range: range of continuous values; images are scaled to [-1, 1].
        num_classes: number of labels, where the data is labelled.
    """

    name: str
    modality: str
    shape: tuple[int, ...]
    vocab_size: int | None = None
    levels: int | None = None
    value_range: tuple[float, float] | None = None
    num_classes: int | None = None

    @property
    def dims(self) -> int:
        """Number of dimensions (or characters) in one example."""
        out = 1
        for s in self.shape:
            out *= s
        return out


@dataclass
class Split:
    """One split of a dataset: examples ``x`` and optional labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


SPLITS = ("train", "val", "test")


class Dataset(ABC):
    """Base class of every dataset.

    Subclasses set the class attributes and implement ``spec`` and ``_load``.
    ``split`` caches the loaded splits per instance.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    #: the metric that ranks methods on this dataset (name of a metric output)
    primary_metric: ClassVar[str] = ""
    #: True for datasets that ship with gmbench and need no download
    embedded: ClassVar[bool] = True
    #: True for the dataset ``gmbench run`` uses for its modality when no ``--datasets`` is
    #: given (the built-in ones: 8gaussians, digits, synthlang); a modality with no such
    #: dataset falls back to every embedded one (``gmbench.runner.default_datasets``)
    suite_default: ClassVar[bool] = False
    #: share of the raw train split held out as ``val`` when ``_load_val`` draws nothing fresh
    val_fraction: ClassVar[float] = 0.15

    def __init__(self, data_seed: int = 0):
        self.data_seed = data_seed
        self._cache: dict[str, Split] = {}

    @abstractmethod
    def spec(self) -> DataSpec:
        """The DataSpec methods are built from."""

    @abstractmethod
    def _load(self, split: str) -> Split:
        """Produce split ``"train"`` or ``"test"`` deterministically (``val`` comes from
        :meth:`_load_val` or is carved from what ``_load("train")`` returns)."""

    def _load_val(self) -> Split | None:
        """A fresh, seeded validation draw, or None to carve ``val`` from the train split."""
        return None

    def split(self, split: str) -> Split:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: use 'train', 'val' or 'test'")
        if split not in self._cache:
            if split == "test":
                self._cache["test"] = self._load("test")
            else:
                train, val = self._load("train"), self._load_val()
                if val is None:
                    train, val = carve(train, self.val_fraction, self.data_seed)
                self._cache["train"], self._cache["val"] = train, val
        return self._cache[split]

    # Optional exact knowledge of the data distribution -----------------------

    def log_prob(self, x: torch.Tensor) -> torch.Tensor | None:
        """Exact log-density (toy2d) or log-probability (text), in nats per example.

        Returns None when the dataset has no known density (real data).
        """
        return None

    def entropy_rate_bits(self) -> float | None:
        """True entropy per dimension/character in bits, where known exactly."""
        return None

    def fingerprint_fields(self) -> dict:
        """Everything about this dataset that makes metrics comparable."""
        spec = self.spec()
        return {
            "dataset": self.name,
            "data_seed": self.data_seed,
            "shape": list(spec.shape),
            "n_train": len(self.split("train")),
            "n_val": len(self.split("val")),
            "n_test": len(self.split("test")),
        }


def carve(train: Split, fraction: float, data_seed: int) -> tuple[Split, Split]:
    """(train, val): a seeded ``fraction`` of ``train`` (at least one example) held out."""
    n = len(train)
    n_val = min(n - 1, max(1, round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed * 7919 + 104729))
    keep, held = perm[n_val:].sort().values, perm[:n_val].sort().values

    def take(idx):
        return Split(train.x[idx], None if train.y is None else train.y[idx])

    return take(keep), take(held)
