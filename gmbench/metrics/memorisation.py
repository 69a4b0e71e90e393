"""Memorisation: the share of samples that sit closer to a training example than real
held-out data does.

The idea is the data-copying test of Meehan, Chaudhuri & Dasgupta 2020 (arXiv
2004.05675): a model that copies its training set places samples closer to the
training points than fresh data from the distribution lies; and the authenticity
score of Alaa et al. 2022 (arXiv 2102.08921), which calls a sample unauthentic when
it is closer to its nearest training example than that example's real neighbours.
What is implemented here is simpler than either (no cells, no test statistic):

* reference: for each test example, the distance to its nearest training example;
  ``tau`` = the 5th percentile of those distances;
* ``copy_share`` = share of samples whose nearest-training-example distance is
  ``<= tau``.

So held-out real data scores about 0.05 and exact copies of training data 1.0. It is a
guard, not a quality score: samples far from everything (noise) score 0. A run with
``copy_share > COPY_FLAG`` is flagged "memorised" on boards.

``test_copy_excess`` guards the held-out split itself, which a method must never read: the
share of samples within ``tau`` of a held-out example minus the share within ``tau`` of as
many training examples (a fixed random subset). Train and held-out data are drawn alike, so
for a model that never saw the held-out split the two shares are equal in expectation
whatever it learned (a model copying its training set scores *below* 0); a model that
returns held-out examples scores up to 1. The runner fails a run above ``TEST_LEAK_FLAG``
(binomial noise at 1,000 samples is about 0.01). Text has no feature space: there both
shares count exact copies of a sequence (``copy_share``: of any training sequence).

Feature space: images use the FID metric's extractor and its FID layer
(``ImageFidelity.extractor``, torch-fidelity's feature pass, nothing re-implemented);
toy2d uses raw coordinates. Euclidean distances, computed exactly (no ``|x|^2 + |y|^2
- 2xy`` shortcut, whose cancellation would blur the zero distance of an exact copy).

Training reference: at most ``TRAIN_MAX`` (20,000) training examples, a subset seeded
with ``SUBSET_SEED`` above that. Every built-in embedded dataset fits whole (toy2d:
20,000; digits: ~1,200). Beyond the cap (MNIST, CIFAR-10) only copies of the subset
are caught: a model copying uniformly from N training examples scores about
``m/N + 0.05 (1 - m/N)`` with ``m = TRAIN_MAX``. The held-out reference is the test
split (up to the same cap). Training features and ``tau`` are computed once per run
(``ctx.memoised``).
"""

from __future__ import annotations

import contextlib

import torch

from gmbench.metrics.base import EvalContext, Metric, MetricError, MetricOutput, MetricSkipped

COPY_FLAG = 0.5  # a run with copy_share above this is flagged "memorised"
TEST_LEAK_FLAG = 0.1  # a run with test_copy_excess above this fails: its samples copy held-out data
QUANTILE = 0.05  # of test-to-train nearest-neighbour distances
TRAIN_MAX = 20000
SUBSET_SEED = 0
MIN_HELD_OUT = 20  # fewer held-out examples cannot place a 5th percentile
_CHUNK = 512


def nn_distances(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each row of ``x`` to its nearest row of ``ref`` (exact, chunked)."""
    x, ref = x.flatten(1).float(), ref.flatten(1).float().to(x.device)
    return torch.cat([
        torch.cdist(c, ref, compute_mode="donot_use_mm_for_euclid_dist").amin(1) for c in x.split(_CHUNK)
    ])


def _capped(x: torch.Tensor) -> torch.Tensor:
    if len(x) <= TRAIN_MAX:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(SUBSET_SEED))[:TRAIN_MAX]]


class Memorisation(Metric):
    """``copy_share``: samples closer to a training example than 95% of test data (module doc)."""

    name = "memorisation"
    version = "2"  # 2: test_copy_excess, and text (exact copies)
    kind = "samples"
    modalities = ("toy2d", "image", "text")
    description = "share of samples nearer a training example than the 5th percentile of test-to-train distances"
    outputs = (
        MetricOutput("copy_share", "lower",
                     "share of samples whose nearest training example is closer than 95% of test examples' "
                     f"(held-out data ~{QUANTILE}, copies 1; flagged above {COPY_FLAG}; text: exact copies)", "fraction"),
        MetricOutput("test_copy_excess", "lower",
                     "share of samples on a held-out example minus the share on as many training examples "
                     f"(~0 for a model that never saw held-out data; a run above {TEST_LEAK_FLAG} fails)", "fraction"),
    )

    def features(self, x: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
        """Raw coordinates (toy2d) or the FID features of images (same extractor and layer as FID)."""
        if ctx.dataset.modality == "toy2d":
            return x.reshape(len(x), -1).float()
        return fid_features(x, ctx)

    def _reference(self, ctx: EvalContext) -> tuple[torch.Tensor, float]:
        """(train features, tau), once per run."""
        def compute():
            train = self.features(_capped(ctx.dataset.split("train").x), ctx)
            held_out = _capped(ctx.test)
            if len(held_out) < MIN_HELD_OUT:
                raise MetricError(f"memorisation needs at least {MIN_HELD_OUT} test examples, the dataset has {len(held_out)}")
            d = nn_distances(self.features(held_out, ctx), train)
            return train, float(torch.quantile(d.double().cpu(), QUANTILE))

        return ctx.memoised(("memorisation", "reference"), compute)

    def _leak_reference(self, ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(held-out examples, as many training examples), a fixed random subset, once per run."""
        def compute():
            held_out = _capped(ctx.test)
            train = ctx.dataset.split("train").x
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(SUBSET_SEED + 1))
            return held_out, train[pick[:len(held_out)]]

        return ctx.memoised(("memorisation", "leak-reference"), compute)

    def score_samples(self, samples: torch.Tensor, ctx: EvalContext) -> dict:
        if len(samples) == 0:
            raise MetricError("memorisation needs at least one sample")
        held_out, train_sub = self._leak_reference(ctx)
        if ctx.dataset.modality == "text":  # exact copies of whole sequences
            train = ctx.memoised(("memorisation", "train-rows"), lambda: _rows(ctx.dataset.split("train").x))
            held, sub = (ctx.memoised(("memorisation", key), lambda x=x: _rows(x))
                         for key, x in (("held-rows", held_out), ("sub-rows", train_sub)))
            rows = [tuple(r) for r in samples.reshape(len(samples), -1).tolist()]
            share = lambda ref: sum(r in ref for r in rows) / len(rows)  # noqa: E731
            return {"copy_share": share(train), "test_copy_excess": share(held) - share(sub)}
        train, tau = self._reference(ctx)
        feats = self.features(samples, ctx)
        held_f, sub_f = ctx.memoised(("memorisation", "leak-features"),
                                     lambda: (self.features(held_out, ctx), self.features(train_sub, ctx)))
        near = lambda ref: float((nn_distances(feats, ref) <= tau).double().mean())  # noqa: E731
        return {"copy_share": near(train), "test_copy_excess": near(held_f) - near(sub_f)}

    def fingerprint_fields(self, ctx: EvalContext) -> dict:
        n_train = min(len(ctx.dataset.split("train").x), TRAIN_MAX)
        fields = {"quantile": QUANTILE, "train_max": TRAIN_MAX, "train_n": n_train, "subset_seed": SUBSET_SEED,
                  "held_out": "test", "distance": "euclidean", "test_leak_flag": TEST_LEAK_FLAG}
        if ctx.dataset.modality == "text":
            return {**fields, "distance": "exact sequence match"}
        if ctx.dataset.modality == "toy2d":
            return {**fields, "features": "raw coordinates"}
        from gmbench.metrics.images import ImageFidelity

        try:
            return {**fields, "features": "FID layer", **ImageFidelity().extractor(ctx).fingerprint(ctx)}
        except (MetricSkipped, MetricError) as exc:
            return {"available": False, "why": str(exc)}


def _rows(x: torch.Tensor) -> set:
    return {tuple(r) for r in x.reshape(len(x), -1).tolist()}


def fid_features(images: torch.Tensor, ctx: EvalContext) -> torch.Tensor:
    """FID-layer features of float images, through the FID metric's extractor and torch-fidelity."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from gmbench.metrics.images import ImageFidelity, _Images

    ext = ImageFidelity().extractor(ctx)
    weights = ext.weights_path(ctx)  # MetricSkipped when absent
    ext.register_with_torch_fidelity()
    layer = ext.fidelity_class().get_default_feature_layer_for_metric("fid")
    cuda = ctx.device.type == "cuda"
    with torch.cuda.device(ctx.device) if cuda else contextlib.nullcontext():
        net = ctx.memoised(("feature_net", ext.name, str(weights), layer), lambda: create_feature_extractor(
            ext.name, [layer], cuda=cuda, feature_extractor_weights_path=str(weights), verbose=False))
        x = _Images(ext.to_input(images, ctx.dataset.spec().value_range))
        feats = get_featuresdict_from_dataset(x, net, ImageFidelity.batch_size, cuda, True, False)
    return feats[layer].float()
