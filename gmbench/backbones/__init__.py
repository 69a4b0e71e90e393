"""Shared networks, so that methods compared on the same data use the same network.

- :class:`MLP` - residual MLP for vectors (toy2d, latents, VAE/GAN encoders/decoders).
- :class:`UNet` - DDPM-style time-conditioned U-Net for 8x8 / 28x28 / 32x32 images.
- :class:`Transformer` - pre-LN transformer over tokens, bidirectional or causal,
  optionally time-conditioned by adaLN, with custom boolean attention masks.
- :func:`size_config` - the ``tiny``/``small``/``base``/``large`` presets behind them.

Conventions: a conditioned network is called ``net(x, t)`` with ``t`` a float tensor of
shape ``(N,)`` in ``[0, 1]`` (or a scalar); each network's last layer is ``net.out``.
"""

from .embeddings import SinusoidalEmbedding, TimeEmbedding, sinusoidal_embedding
from .flops import register_cpu_attention_flops
from .mlp import MLP
from .sizes import KINDS, SIZES, check_size, count_parameters, size_config
from .transformer import Transformer
from .unet import UNet, num_downsamples

__all__ = [
    "KINDS",
    "MLP",
    "SIZES",
    "SinusoidalEmbedding",
    "TimeEmbedding",
    "Transformer",
    "UNet",
    "check_size",
    "count_parameters",
    "num_downsamples",
    "register_cpu_attention_flops",
    "sinusoidal_embedding",
    "size_config",
]
