"""gmbench: a benchmark suite for generative models.

The host (this package) discovers method plugins through the ``gmbench``
entry-point group, trains each under a fixed compute budget, samples it,
scores it with the metrics registered for its data modality, and writes one
JSON record per run. See README.md and docs/.
"""

import os as _os

# OpenMP threads that wait by spinning collapse when other processes share the cores: on
# this project's 2-core machine under load, a 2-thread training step took 771-1113 ms
# spinning and 82-148 ms passive (1 thread: 40-69 ms; docs/scaling.md). The OpenMP
# runtime reads this when torch loads it, so it is set here, before any torch import;
# a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from gmbench.hookspecs import hookimpl  # noqa: E402

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
