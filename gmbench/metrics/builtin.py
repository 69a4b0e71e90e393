"""gmbench's own metrics, registered through the same hook as a third party's."""

from __future__ import annotations

from gmbench.hookspecs import hookimpl


@hookimpl
def gmbench_register_metrics(register):
    from gmbench.metrics.likelihood import HeldOutLikelihood
    from gmbench.metrics.pixels import PixelSlicedWasserstein
    from gmbench.metrics.text import TrueSourceNLL
    from gmbench.metrics.toy2d import Toy2DSampleMetrics

    for metric in (HeldOutLikelihood(), Toy2DSampleMetrics(), PixelSlicedWasserstein(), TrueSourceNLL()):
        register(metric)
