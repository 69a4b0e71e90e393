"""Cutting a training stage short at a chosen step, as a deadline would on a busy machine.

``train(..., clock=clock, deadline=1.0)`` stops a stage once the clock passes the deadline; a
method built from ``stopping_at(cls, n, clock)`` moves the clock past it while step ``n`` runs,
so the stage stops right after that step, checkpointed, on any machine speed.
"""

from __future__ import annotations


class JumpingClock:
    """A clock at 0 until a step moves it."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


def stopping_at(cls: type, step: int, clock: JumpingClock) -> type:
    """A subclass of the method ``cls`` that pushes ``clock`` past any deadline during ``step``."""

    class Stopping(cls):
        def training_step(self, stage, batch, step_now):
            if step_now == step:
                clock.now = 1e9
            return super().training_step(stage, batch, step_now)

    Stopping.__name__ = f"{cls.__name__}StoppingAt{step}"
    return Stopping
