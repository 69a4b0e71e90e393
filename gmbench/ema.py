"""Exponential moving average of a network's weights, shared by the methods that sample from one.

The decay warms up as ``min(decay, (1 + step) / (10 + step))`` (the schedule of the DDPM
and Score SDE released code): early in a short run the average follows the live weights
closely instead of being dominated by the random initialisation, which matters at the
suite's small budgets where a run may take only a few hundred steps.
"""

from __future__ import annotations

import torch
from torch import nn


def warmed_decay(decay: float, step: int) -> float:
    """The decay used after optimizer step ``step`` (0-based)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, live: nn.Module, decay: float, step: int) -> None:
    """``ema <- d ema + (1 - d) live`` over the parameters, with ``d = warmed_decay(decay, step)``."""
    weight = 1.0 - warmed_decay(decay, step)
    for p_ema, p in zip(ema.parameters(), live.parameters()):
        p_ema.lerp_(p, weight)
