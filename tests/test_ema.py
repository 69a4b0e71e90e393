"""The shared weight average (gmbench.ema) against its closed form."""

import torch
from torch import nn

from gmbench.ema import ema_update, warmed_decay


def test_the_decay_warms_up_then_holds():
    assert warmed_decay(0.999, 0) == 0.1  # (1 + 0) / (10 + 0)
    assert warmed_decay(0.999, 90) == 91 / 100
    assert warmed_decay(0.999, 10**6) == 0.999


def test_an_update_moves_the_average_by_one_minus_the_decay():
    ema, live = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, live, decay=0.5, step=10**6)
    for b, p_ema, p in zip(before, ema.parameters(), live.parameters()):
        torch.testing.assert_close(p_ema, 0.5 * b + 0.5 * p)
