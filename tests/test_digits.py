"""The embedded digits dataset."""

from __future__ import annotations

import torch

from gmbench.data.digits import Digits


def test_digits_shape_range_levels_and_split():
    ds = Digits()
    train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
    assert train.x.shape[1:] == (1, 8, 8) and len(train) + len(val) + len(test) == 1797
    assert len(test) == 359 and len(val) == round(0.15 * (1797 - 359))
    # validation images are held out of training (selection must not see training data)
    seen = {tuple(r.tolist()) for r in train.x.flatten(1)}
    assert sum(tuple(r.tolist()) in seen for r in val.x.flatten(1)) < 5
    assert train.x.min() == -1 and train.x.max() == 1
    levels = torch.unique(torch.cat([train.x, test.x]))
    assert len(levels) == 17  # 0..16 counts scaled to [-1, 1]
    assert set(train.y.tolist()) == set(range(10))
    # disjoint: no test image appears in train (the raw set has no exact duplicates across this split)
    tr = {tuple(r.tolist()) for r in train.x.flatten(1)}
    assert sum(tuple(r.tolist()) in tr for r in test.x.flatten(1)) < 5


def test_digits_split_depends_only_on_data_seed():
    assert torch.equal(Digits().split("test").x, Digits().split("test").x)
    assert not torch.equal(Digits().split("test").x, Digits(data_seed=1).split("test").x)
