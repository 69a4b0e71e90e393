"""Datasets: the contract (:mod:`gmbench.data.base`) and the built-in sets."""

from gmbench.data.base import MODALITIES, Dataset, DataSpec, Split

__all__ = ["MODALITIES", "Dataset", "DataSpec", "Split", "make_dataset"]


def make_dataset(registry, token: str, data_seed: int = 0) -> Dataset:
    """Build a dataset from ``name`` or ``name:argument`` (e.g. ``imagefolder:/path``)."""
    name, _, arg = token.partition(":")
    cls = registry.get(name)
    return cls(arg, data_seed=data_seed) if arg else cls(data_seed=data_seed)
