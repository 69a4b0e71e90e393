"""The image methods on "any image dataset through the datasets path" (issue 13): a local
folder of 32x32 RGB images in two class sub-folders, read by the ``imagefolder`` builder
(``gmbench.data.hub.ImageFolderDataset``), trained for a few host steps and sampled through the
host's draw. ``mar`` has its own such test (tests/test_mar.py); DC-AE is run at f = 32, the
"f32 and beyond on larger images" the issue names (a 1x1 latent)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gmbench.budget import SMOKE
from gmbench.conditioning import draw_samples
from gmbench.training import train


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    from PIL import Image

    from gmbench.data.hub import ImageFolderDataset

    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for label, tint in (("cats", 0), ("dogs", 2)):  # one colour channel brighter per class
        (root / label).mkdir()
        for i in range(16):
            pixels = torch.rand(32, 32, 3, generator=g) * 128
            pixels[..., tint] += 127
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(root / label / f"{i}.png")
    return ImageFolderDataset(str(root), size=32, cache_dir=str(root.parent / "cache"))


CASES = [
    ("gan", {}),
    ("dc-ae", {"f": 32, "latent_channels": 32}),  # the paper's f32c32
    ("dc-ae", {"f": 32, "latent_channels": 32, "residual": False}),
    ("ldm", {"f": 4}),
    ("ldm", {"f": 4, "class_cond": True}),
    ("mar", {"patch_size": 8, "class_cond": True}),
]


@pytest.mark.parametrize("name,hparams", CASES, ids=[f"{n}{h}" for n, h in CASES])
def test_trains_and_samples_on_a_folder_of_images(folder_dataset, name, hparams):
    from gmbench.plugins import Registries

    spec = folder_dataset.spec()
    assert spec.shape == (3, 32, 32) and spec.num_classes == 2  # the sub-folders are the classes
    split = folder_dataset.split("train")
    assert split.y is not None and set(split.y.tolist()) == {0, 1}
    cls = Registries().methods.get(name)
    torch.manual_seed(0)
    method = cls(spec, model_size="tiny", **hparams)
    assert method.class_conditional == bool(hparams.get("class_cond"))
    budget = dataclasses.replace(SMOKE, train_flops={"image": 3e10}, batch_size={"image": 8})
    reports = train(method, split.x, budget, "image", torch.Generator().manual_seed(1), labels=split.y)
    assert all(r.steps >= 1 for r in reports) and sum(r.flops for r in reports) <= 3e10
    method.train(False)
    sampler = method.samplers[0]
    x = draw_samples(method, 3, sampler.name, 4 if sampler.adjustable_nfe else sampler.default_nfe,
                     torch.Generator().manual_seed(2))
    # three colour channels that differ (an RGB folder read as grey would repeat one), distinct samples
    assert x.shape == (3, 3, 32, 32) and torch.isfinite(x).all()
    assert not torch.equal(x[:, 0], x[:, 1]) and not torch.equal(x[0], x[1])
