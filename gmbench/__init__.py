"""gmbench: a benchmark suite for generative models.

The host (this package) discovers method plugins through the ``gmbench``
entry-point group, trains each under a fixed compute budget, samples it,
scores it with the metrics registered for its data modality, and writes one
JSON record per run. See README.md and docs/.
"""

from gmbench.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
