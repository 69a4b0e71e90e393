"""Noise floors: real data scored exactly like a method's samples.

No method can beat the score of samples from the data distribution itself,
and at a finite sample count that score is not 0 (sliced Wasserstein between
two draws of 1,000 points, FID between two sets of real images, ...). A board
that shows this *floor* beside the methods says how much of a gap is left and
which differences are below what the metric can resolve.

:func:`floor_samples` draws the real data, as many examples as the budget
scores for the modality:

* toy 2-D datasets: a fresh draw from the true density
  (``dataset.sample(n, torch.Generator)``) — label "noise floor: true distribution";
* the synthetic language: fresh windows of the true source
  (``dataset.sample(n, numpy Generator)``) — the same label;
* every other dataset (images, natural text): a seeded subset of the *train*
  split, scored against the metrics' references (the test split for most) —
  label "noise floor: train vs test". Metrics whose own reference is the train
  split (FID by default, the memorisation metric's copy_share) score that row
  at its memorisation point instead: a train subset copies the training set by
  construction (digits at smoke: FID 4.3 against train, copy_share 1.0), so
  boards never flag a floor row as memorised.

The draw's seed stream is its own (``SeedSequence([data_seed, FLOOR_STREAM, seed])``),
disjoint from the dataset's train, validation and test streams.

:func:`floor_record` scores them with every sample metric that applies, through
the host's own scoring (``gmbench.evaluate``) and under the same protocol
fingerprint as a method's run on that dataset and budget, and returns a record
with ``source: "reference"``, ``method: "floor"`` and one entry per metric
output with ``sampler`` and ``nfe`` None (nothing was sampled) and ``split``
"test". Boards show such records as unranked floor rows (gmbench.leaderboard).

Where the floor is the true distribution (toy 2-D sets, the synthetic language) gmbench knows
its density exactly (``dataset.log_prob``; a toy set that can only be sampled gets none), so the
record also carries the likelihood metric's outputs for the
:class:`TrueDensity` scored through the same metric code as a method, on the same test
examples: ``test_nll`` (toy2d, nats) or ``test_bpc`` (text), labelled ``exact``. That is the
best test likelihood any model can expect (its expected excess is a KL divergence, >= 0), so
boards show how far each likelihood is from it and claims can say a flow "approaches the true
entropy" (``tie`` with the floor's cell).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import torch

from gmbench.data import make_dataset
from gmbench.data.base import Dataset
from gmbench.data.synthlang import SyntheticLanguage
from gmbench.data.toy2d import Toy2D
from gmbench.evaluate import _run_metric, eval_context, protocol_fields
from gmbench.metrics.base import check_samples
from gmbench.external import given_samples_record
from gmbench.records import RecordError, RunSpec

FLOOR_METHOD = "floor"
FLOOR_STREAM = 0xF100  # tags the floor's seed stream (see the module docstring)
TRUE_DISTRIBUTION = "noise floor: true distribution"
TRAIN_VS_TEST = "noise floor: train vs test"


class TrueDensity:
    """The dataset's own law standing in for a method, for the likelihood metric: ``exact``
    log-densities from ``dataset.log_prob`` (no parameters, no sampling)."""

    name = "true density"
    likelihood = "exact"

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.dataset.log_prob(x.cpu()).to(x.device)


def knows_density(dataset: Dataset) -> bool:
    """Whether ``dataset.log_prob`` gives its exact density (a toy2d set that can only be sampled,
    e.g. a plugin's ``Toy2D`` without ``log_prob``, has a true-distribution floor but no likelihood)."""
    return dataset.log_prob(dataset.split("test").x[:1]) is not None


class FloorError(RecordError):
    """A floor that cannot be drawn (too little data); one line."""


def floor_kind(dataset: Dataset) -> str:
    """The board label of ``dataset``'s floor: the true distribution where it can be sampled, else train vs test."""
    return TRUE_DISTRIBUTION if isinstance(dataset, (Toy2D, SyntheticLanguage)) else TRAIN_VS_TEST


def _seed_sequence(dataset: Dataset, seed: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(dataset.data_seed), FLOOR_STREAM, int(seed)])


def floor_samples(dataset: Dataset, n: int, seed: int) -> torch.Tensor:
    """``n`` real examples standing in for a perfect model's samples (see the module docstring)."""
    if isinstance(dataset, Toy2D):
        state = int(_seed_sequence(dataset, seed).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
        return dataset.sample(n, torch.Generator().manual_seed(state))
    if isinstance(dataset, SyntheticLanguage):
        return dataset.sample(n, np.random.default_rng(_seed_sequence(dataset, seed)))
    train = dataset.split("train").x
    if len(train) < n:
        raise FloorError(f"the train split of {dataset.name!r} holds {len(train)} examples; the budget scores {n} "
                         "samples, so its train-vs-test floor cannot be drawn at this budget")
    state = int(_seed_sequence(dataset, seed).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(state))[:n].sort().values
    return train[idx]


def floor_spec(dataset_token: str, budget_name: str, seed: int, device: str = "cpu",
               eval_options: dict | None = None) -> RunSpec:
    """The spec a floor record is filed under (``load`` marks it, so a method named 'floor' never collides)."""
    return RunSpec(FLOOR_METHOD, dataset_token, budget_name, seed, device, load="reference",
                   eval_options=tuple(sorted((eval_options or {}).items())))


def floor_record(reg, dataset_name: str, budget_name: str, seed: int, device: str = "cpu",
                 cache_dir: str | None = None, eval_options: dict | None = None) -> dict:
    """Score the floor samples of ``dataset_name`` at ``budget_name`` like a method's; return the record.

    ``eval_options`` are the methods' evaluation options (``fid_reference_split``...): the floor
    must be scored under the same ones to share their fingerprint.
    """
    budget = reg.budgets.get(budget_name)
    dataset = make_dataset(reg.datasets, dataset_name)
    metrics = [m for m in (reg.metrics.get(name) for name in reg.metrics.names()) if m.applies_to(dataset)]
    ctx = eval_context(dataset, budget, seed, device, cache_dir, extractors=reg.feature_extractors,
                       options=dict(eval_options or {}))
    fields = protocol_fields(dataset, budget, metrics, ctx)
    spec = floor_spec(dataset_name, budget.name, seed, device, eval_options)
    kind = floor_kind(dataset)
    record = given_samples_record(spec, dataset, fields, "reference", device, reference={
        "label": kind, "samples": "true distribution" if kind == TRUE_DISTRIBUTION else "train split"})
    samples = check_samples(floor_samples(dataset, ctx.n_samples, seed), dataset)
    record["reference"]["n"] = len(samples)
    entries = []
    for metric in (m for m in metrics if m.kind == "samples"):
        entries += [dict(e, split="test") for e in _run_metric(metric, ctx, sampler=None, nfe=None, samples=samples)]
    if kind == TRUE_DISTRIBUTION and knows_density(dataset):  # score it like a method's likelihood
        truth = TrueDensity(dataset)
        for metric in (m for m in metrics if m.kind == "model" and m.likelihood_values):
            entries += [dict(e, split="test") for e in _run_metric(metric, ctx, sampler=None, nfe=None, method=truth)]
        record["likelihood"] = "exact"
    ok = [e for e in entries if e.get("error") is None and e.get("value") is not None]
    record.update(
        status="ok" if ok else "failed",
        error=None if ok else next((e["error"] for e in entries if e.get("error")), "no sample metric applies"),
        finished_at=_now(),
        metrics=entries,
    )
    return record


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
