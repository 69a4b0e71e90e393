"""gmbench's expected errors, in a module that imports nothing heavy.

The command line turns these into one-line messages; defining them here (and
re-exporting them where they belong) lets it catch them without importing torch.
"""

from __future__ import annotations


class DatasetUnavailableError(RuntimeError):
    """A dataset that needs a download (or a cache) it cannot get; one-line message."""


class MethodError(RuntimeError):
    """A method broke its contract (wrong shape, NaN, unknown sampler...)."""


class EnvironmentSettingError(ValueError):
    """A gmbench environment variable with a value it cannot use ($GMBENCH_CAP_SCALE, ...);
    the message names the variable and what to give."""
