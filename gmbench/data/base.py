"""The dataset contract: what a method and a metric may know about the data.

A dataset is a class registered through the ``gmbench_register_datasets`` hook.
Its splits are deterministic: they depend on the dataset's own ``data_seed``
(fixed, default 0), never on the run's seed, so every method and every seed of
a comparison sees the very same train and test examples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

MODALITIES = ("toy2d", "image", "text")

EMBEDDED_ALTERNATIVES = "toy2d datasets (8gaussians, checkerboard, moons, spirals, rings), digits, synthlang"


class DatasetUnavailableError(RuntimeError):
    """A dataset that needs a download (or a cache) it cannot get; one-line message."""


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

    def __init__(self, data_seed: int = 0):
        self.data_seed = data_seed
        self._cache: dict[str, Split] = {}

    @abstractmethod
    def spec(self) -> DataSpec:
        """The DataSpec methods are built from."""

    @abstractmethod
    def _load(self, split: str) -> Split:
        """Produce split ``"train"`` or ``"test"`` deterministically."""

    def split(self, split: str) -> Split:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
        if split not in self._cache:
            self._cache[split] = self._load(split)
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
            "n_test": len(self.split("test")),
        }
