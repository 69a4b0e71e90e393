"""gmbench's own metrics and feature extractors, registered through the same
hooks as a third party's (a pytest-style built-in plugin)."""

from __future__ import annotations

from gmbench.hookspecs import hookimpl


@hookimpl
def gmbench_register_metrics(register):
    from gmbench.metrics.genppl import GenerativePerplexity, GPT2Perplexity
    from gmbench.metrics.images import ImageFidelity
    from gmbench.metrics.likelihood import HeldOutLikelihood
    from gmbench.metrics.memorisation import Memorisation
    from gmbench.metrics.pixels import PixelSlicedWasserstein
    from gmbench.metrics.text import TextDegeneracy, TrueSourceNLL
    from gmbench.metrics.toy2d import Toy2DSampleMetrics

    for metric in (
        HeldOutLikelihood(),
        Toy2DSampleMetrics(),
        ImageFidelity(),
        ImageFidelity("gmbench-inception-v3", suffix="_inception"),
        PixelSlicedWasserstein(),
        TrueSourceNLL(),
        TextDegeneracy(),
        GenerativePerplexity(),
        GPT2Perplexity(),
        Memorisation(),
    ):
        register(metric)


@hookimpl
def gmbench_register_feature_extractors(register):
    from gmbench.metrics.extractors import builtin_extractors

    for extractor in builtin_extractors().values():
        register(extractor)
