"""Model-size presets shared by every backbone.

A budget names one preset (``"tiny"``, ``"small"``, ``"base"``, ``"large"``) and every
method builds its networks at that preset, so DDPM, flow matching, consistency models and
the rest are compared on the *same* network. ``tiny`` and ``small`` are sized for a
2-core CPU (tests, CI, ``gmbench run`` defaults); ``base`` and ``large`` are for GPUs.

Parameter counts grow strictly with the preset for every kind (``tests/test_backbones.py``
checks it for the 2-D MLP, the 8x8 one-channel U-Net and a 27-token transformer).

Cost guide (2-core CPU, batch 64, forward + backward): the ``tiny`` U-Net takes ~30 ms on
8x8 and ~0.5 s on 28x28; ``small`` (48 base channels, chosen over 64 to keep 28x28 under
~1 GFLOP per sample forward) ~80 ms on 8x8. ``base`` follows DDPM's CIFAR-10 layout at half
width (64 channels); ``large`` is DDPM's CIFAR-10 width (128 channels, ~36M parameters at
32x32).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch.nn as nn

SIZES: tuple[str, ...] = ("tiny", "small", "base", "large")
KINDS: tuple[str, ...] = ("mlp", "unet", "transformer")

# Each entry documents its keys once, here:
#   mlp:          width (hidden units), depth (residual layers), emb_dim (time-embedding
#                 width before the conditioning projection).
#   unet:         channels (base channel count), channel_mult (per-resolution multipliers
#                 of `channels`; truncated when the image is too small to downsample that
#                 often), num_res_blocks (ResBlocks per level on the way down; the way up
#                 uses one more, as in DDPM), attention (self-attention at the lowest
#                 resolution), heads (attention heads), dropout (inside ResBlocks).
#   transformer:  width (model dimension), depth (blocks), heads (attention heads),
#                 mlp_ratio (feed-forward hidden = mlp_ratio * width), dropout.
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mlp": {
        "tiny": {"width": 128, "depth": 3, "emb_dim": 64},
        "small": {"width": 256, "depth": 3, "emb_dim": 128},
        "base": {"width": 512, "depth": 4, "emb_dim": 128},
        "large": {"width": 1024, "depth": 6, "emb_dim": 256},
    },
    "unet": {
        "tiny": {"channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1,
                 "attention": False, "heads": 1, "dropout": 0.0},
        "small": {"channels": 48, "channel_mult": (1, 2, 2), "num_res_blocks": 1,
                  "attention": False, "heads": 1, "dropout": 0.0},
        "base": {"channels": 64, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 2,
                 "attention": True, "heads": 4, "dropout": 0.1},
        "large": {"channels": 128, "channel_mult": (1, 2, 2, 2), "num_res_blocks": 2,
                  "attention": True, "heads": 4, "dropout": 0.1},
    },
    "transformer": {
        "tiny": {"width": 64, "depth": 2, "heads": 4, "mlp_ratio": 4, "dropout": 0.0},
        "small": {"width": 128, "depth": 4, "heads": 4, "mlp_ratio": 4, "dropout": 0.0},
        "base": {"width": 512, "depth": 8, "heads": 8, "mlp_ratio": 4, "dropout": 0.1},
        "large": {"width": 768, "depth": 12, "heads": 12, "mlp_ratio": 4, "dropout": 0.1},
    },
}


def _unknown(what: str, name: object, valid: tuple[str, ...]) -> ValueError:
    hint = ""
    if isinstance(name, str):
        close = difflib.get_close_matches(name, valid, n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return ValueError(f"unknown {what} {name!r}; valid: {', '.join(valid)}{hint}")


def check_size(size: str) -> str:
    """Return ``size`` if it is a preset name, else raise ``ValueError`` naming the valid ones."""
    if size not in SIZES:
        raise _unknown("model size", size, SIZES)
    return size


def size_config(kind: str, size: str) -> dict[str, Any]:
    """Hyper-parameters of backbone ``kind`` at preset ``size``.

    Args:
        kind: which backbone, one of ``"mlp"``, ``"unet"``, ``"transformer"``.
        size: preset name, one of ``"tiny"``, ``"small"``, ``"base"``, ``"large"``.

    Returns:
        A fresh dict (safe to modify) of the keys documented at the top of this module.

    Raises:
        ValueError: unknown ``kind`` or ``size``; the one-line message lists the valid
            names and suggests the closest one.
    """
    if kind not in _PRESETS:
        raise _unknown("backbone kind", kind, KINDS)
    check_size(size)
    return dict(_PRESETS[kind][size])


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all of them, or only those requiring grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
