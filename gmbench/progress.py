"""Progress of the run in flight, for people watching a terminal.

Training reports each stage's FLOPs spent against its allowance and evaluation
reports each (sampler, NFE) setting as it finishes, both with tqdm's rate and
ETA. Nothing is shown unless a caller installs a reporter: ``gmbench run`` does
so when stderr is a terminal and ``--quiet`` is not given, so logs, CI and
worker processes (``--jobs``, Ray) stay free of bars. A reporter never touches
what is measured: it only reads counters the loops keep anyway.

Usage in a loop::

    bar = progress.task("ddpm stage main", total=allowance, unit="FLOP")
    bar.advance(step_flops)
    bar.close()
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Iterator


class Task:
    """One bar: a no-op unless a reporter made it."""

    def advance(self, amount: float = 1.0, note: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmTask(Task):
    def __init__(self, label: str, total: float, unit: str, stream, mininterval: float) -> None:
        from tqdm import tqdm

        scale = unit == "FLOP"  # FLOPs as 1.2G, not 1234567890
        self.bar = tqdm(total=total, desc=label, unit=unit, unit_scale=scale, leave=False, file=stream,
                        dynamic_ncols=True, mininterval=mininterval)

    def advance(self, amount: float = 1.0, note: str | None = None) -> None:
        if note is not None:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(amount)

    def close(self) -> None:
        self.bar.close()


class Reporter:
    """Makes bars; the base class makes silent ones."""

    def task(self, label: str, total: float, unit: str = "it") -> Task:
        return Task()


class TqdmReporter(Reporter):
    """Bars on ``stream`` (stderr by default), removed when done."""

    def __init__(self, stream=None, mininterval: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.mininterval = mininterval  # seconds between redraws: a step loop must not pay for drawing

    def task(self, label: str, total: float, unit: str = "it") -> Task:
        return _TqdmTask(label, total, unit, self.stream, self.mininterval)


_current: contextvars.ContextVar[Reporter] = contextvars.ContextVar("gmbench_progress", default=Reporter())


def task(label: str, total: float, unit: str = "it") -> Task:
    """A bar from the reporter in effect (silent by default)."""
    return _current.get().task(label, total, unit)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Install ``reporter`` (None: silent) for the code inside the block."""
    token = _current.set(reporter if reporter is not None else Reporter())
    try:
        yield
    finally:
        _current.reset(token)


def wanted(quiet: bool, stream=None) -> bool:
    """Bars only for a person at a terminal."""
    stream = stream if stream is not None else sys.stderr
    return not quiet and bool(getattr(stream, "isatty", lambda: False)())
