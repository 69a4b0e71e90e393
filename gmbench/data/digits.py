"""The 8x8 handwritten digits that scikit-learn ships.

Source: UCI Machine Learning Repository, "Optical Recognition of Handwritten
Digits" (Alpaydin & Kaynak, 1998), as packaged by ``sklearn.datasets.load_digits``
(1,797 images, 16x16-block counts: integer values 0..16). Pixels are scaled to
[-1, 1] with 17 quantisation levels; bits/dim dequantise over those levels.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from gmbench.data.base import Dataset, DataSpec, Split


class Digits(Dataset):
    name = "digits"
    suite_default = True
    modality = "image"
    description = "8x8 handwritten digits, 1797 images, 10 classes (scikit-learn / UCI)"
    citation = "Alpaydin & Kaynak (1998), UCI Optical Recognition of Handwritten Digits"
    primary_metric = "fid"
    levels: ClassVar[int] = 17
    test_fraction: ClassVar[float] = 0.2

    def spec(self) -> DataSpec:
        return DataSpec(
            name=self.name, modality="image", shape=(1, 8, 8), levels=self.levels, value_range=(-1.0, 1.0), num_classes=10
        )

    def _all(self) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2.0 - 1.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        # A fixed permutation from data_seed, stratification is unnecessary at 180/class.
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.data_seed))
        return x[perm], y[perm]

    def _load(self, split: str) -> Split:
        x, y = self._all()
        n_test = int(round(len(y) * self.test_fraction))
        if split == "test":
            return Split(x[:n_test], y[:n_test])
        return Split(x[n_test:], y[n_test:])
