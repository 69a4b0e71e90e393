"""The small convolutional classifier behind gmbench's offline image features.

FID, KID, precision/recall and the Inception Score need a feature extractor.
Inception-v3 needs weights from the internet and sees 8x8 digits upsampled
to 299x299, so the offline default is this classifier, trained on the
dataset's own train split by ``scripts/train_feature_extractor.py`` (the
approach of FID on MNIST with a LeNet: Binkowski et al. 2018, arXiv 1801.01401,
sec. 5; Lucic et al. 2018, arXiv 1711.10337). Its features:

* ``pool``: the global average of the last convolution (``4 * width`` values,
  128 at the default width) — used by FID, KID and precision/recall;
* ``logits``: the class logits — used by the Inception Score.

Input: uint8 images ``(N, C, H, W)`` in 0..255 (torch-fidelity's convention,
and what a PNG of the sample holds); the network maps them to [-1, 1] itself,
so the training script and the metric see identical quantisation.

Weights are safetensors with the architecture in the file's metadata; a JSON
sidecar next to them states the dataset, its test accuracy and the sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from gmbench.records import sha256_file

ARCH = "gmbench-cnn-v1"


class SmallConvClassifier(nn.Module):
    """conv-conv-pool-conv-conv-avgpool -> linear; resolution-agnostic.

    Args:
        in_channels: image channels (1 for digits/mnist, 3 for cifar10).
        num_classes: number of labels.
        width: channels of the first convolutions; the pooled feature has ``4 * width``.
        image_size: height of the images; above 16 one more 2x2 pool keeps the cost low.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, image_size: int = 8):
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "image_size": image_size}
        extra_pool = [nn.MaxPool2d(2)] if image_size > 16 else []
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), *extra_pool,
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(4 * width, num_classes)

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 -> float [-1, 1]."""
        return x.float() / 127.5 - 1.0

    def features(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool, logits) of uint8 images."""
        pool = self.body(self.normalise(x_uint8))
        return pool, self.head(self.drop(pool))

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.features(x_uint8)[1]


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Float images in ``value_range`` (clamped) to uint8 0..255, rounding to nearest."""
    lo, hi = value_range
    x = (images.float().clamp(lo, hi) - lo) / (hi - lo)
    return (x * 255.0).round().to(torch.uint8)


def save_classifier(net: SmallConvClassifier, path: str | Path, sidecar: dict) -> dict:
    """Write weights (safetensors, config in metadata) and the JSON sidecar; return the sidecar."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"arch": ARCH, **{k: str(v) for k, v in net.config.items()}}
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(path), metadata=meta)
    path.chmod(0o644)  # safetensors writes 0600; the weights are committed and shared
    sidecar = {**sidecar, "arch": ARCH, "config": net.config, "weights": path.name, "sha256": sha256_file(path)}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return sidecar


def load_classifier(path: str | Path) -> SmallConvClassifier:
    """Build the network from a safetensors file written by :func:`save_classifier`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier weights at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("arch") != ARCH:
        raise ValueError(f"{path} is not a {ARCH} classifier (metadata arch={meta.get('arch')!r})")
    net = SmallConvClassifier(**{k: int(meta[k]) for k in ("in_channels", "num_classes", "width", "image_size")})
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)
