"""Uncertainty across seeds: intervals and paired comparisons.

A run's seed fixes network initialisation, data order and sampling noise; the
data splits and the metric protocol are the same for every seed. So

* :func:`summarize` gives the mean over seeds and a 95% Student-t interval,
  ``mean +- t_{0.975, n-1} * s / sqrt(n)`` — exact for normally distributed
  per-seed values, and the honest choice for the 3-10 seeds a benchmark
  affords (a normal interval would be too narrow);
* :func:`paired_compare` says whether method A beats method B beyond seed
  noise. Runs are *paired by seed*: seed s of A and seed s of B share the data
  order and the evaluation noise streams, so the per-seed differences
  ``d_s = A_s - B_s`` cancel what the two runs have in common. The default
  test is the paired t-test on ``d`` (``scipy.stats.ttest_rel``); with
  ``test="bootstrap"`` a percentile bootstrap of the mean difference
  (anti-conservative below ~8 pairs: prefer the t-test there). A winner is
  declared only when the two-sided p-value is below ``1 - confidence``, and
  the metric's direction decides which sign wins.

:func:`seed_values` collects one metric's values by seed from run records,
refusing to mix records with different protocol fingerprints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

DIRECTIONS = ("lower", "higher")


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with a Student-t interval (``low``/``high`` are None for n < 2)."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.half_width is None:
            return f"{self.mean:.4g} (n={self.n}, no interval)"
        return f"{self.mean:.4g} ± {self.half_width:.2g} ({self.confidence:.0%} CI, n={self.n})"

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Mean and ``confidence`` Student-t interval of per-seed values."""
    from scipy import stats

    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize: no values")
    if not np.isfinite(x).all():
        raise ValueError("summarize: values contain NaN or inf")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(1, mean, None, None, None, confidence)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return Summary(int(x.size), mean, std, mean - half, mean + half, confidence)


@dataclass(frozen=True)
class Comparison:
    """Outcome of :func:`paired_compare` (``diff`` = A - B)."""

    direction: str
    seeds: tuple[int, ...]
    mean_a: float
    mean_b: float
    diff: Summary | None
    p_value: float | None
    test: str
    better: str | None  # "a", "b" or None (not separable from seed noise)
    verdict: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d


def paired_compare(
    a: Mapping[int, float],
    b: Mapping[int, float],
    direction: str,
    confidence: float = 0.95,
    test: str = "t",
    n_boot: int = 10000,
    seed: int = 0,
    names: tuple[str, str] = ("A", "B"),
) -> Comparison:
    """Does A beat B beyond seed noise? ``a``/``b`` map seed -> metric value.

    Only seeds present in both are used. ``direction`` is the metric's
    (``"lower"`` or ``"higher"`` is better).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'lower' or 'higher', got {direction!r}")
    if test not in ("t", "bootstrap"):
        raise ValueError(f"test must be 't' or 'bootstrap', got {test!r}")
    seeds = tuple(sorted(set(a) & set(b)))
    xa = np.array([float(a[s]) for s in seeds])
    xb = np.array([float(b[s]) for s in seeds])
    mean_a = float(xa.mean()) if seeds else math.nan
    mean_b = float(xb.mean()) if seeds else math.nan
    if len(seeds) < 2:
        return Comparison(direction, seeds, mean_a, mean_b, None, None, test, None,
                          f"need at least 2 seeds run by both {names[0]} and {names[1]}, have {len(seeds)}")
    d = xa - xb
    diff = summarize(d, confidence)
    p = _p_value(d, test, n_boot, seed)
    alpha = 1 - confidence
    better = None
    if p < alpha and diff.mean != 0:
        a_wins = diff.mean < 0 if direction == "lower" else diff.mean > 0
        better = "a" if a_wins else "b"
    what = f"{diff.mean:+.4g} (A - B; {direction} is better), p = {p:.3g}, {len(seeds)} paired seeds"
    if better is None:
        verdict = f"no difference beyond seed noise: {what}"
    else:
        winner = names[0] if better == "a" else names[1]
        verdict = f"{winner} is better: {what}"
    return Comparison(direction, seeds, mean_a, mean_b, diff, p, test, better, verdict)


def _p_value(d: np.ndarray, test: str, n_boot: int, seed: int) -> float:
    if np.all(d == d[0]):
        # every seed gave the same difference: no noise to test against
        return 1.0 if d[0] == 0 else 0.0
    if test == "t":
        from scipy import stats

        return float(stats.ttest_1samp(d, 0.0).pvalue)  # == ttest_rel(a, b)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    tail = min(float((means <= 0).mean()), float((means >= 0).mean()))
    return min(1.0, 2 * tail)


def seed_values(
    records: Iterable[dict],
    method: str,
    dataset: str,
    metric: str,
    sampler: str | None = None,
    nfe: int | None = None,
    direction: str = "lower",
    allow_mixed_fingerprints: bool = False,
) -> dict[int, float]:
    """``{seed: test value}`` of ``metric`` for ``method`` on ``dataset`` from ok records.

    With ``sampler`` and/or ``nfe`` only those settings are candidates; the
    setting is then chosen as the boards choose it
    (:func:`gmbench.ranking.select_setting`: best mean over seeds of the
    validation value, by ``direction``), one setting for every seed, and the
    *test* values at it are returned. Validation values are never returned.
    """
    from gmbench.ranking import select_setting, selected_values

    runs: list[dict] = []
    seeds: set[int] = set()
    for r in records:
        if r.get("status") != "ok" or r.get("method") != method or r.get("dataset") != dataset:
            continue
        entries = [
            e for e in r.get("metrics", [])
            if e.get("name") == metric and (sampler is None or e.get("sampler") == sampler)
            and (nfe is None or e.get("nfe") == nfe) and e.get("value") is not None
        ]
        if not entries:
            continue
        if r["seed"] in seeds:
            raise ValueError(f"two records for {method} on {dataset} with seed {r['seed']}")
        seeds.add(r["seed"])
        runs.append(dict(r, metrics=entries))
    prints = {r.get("fingerprint") for r in runs}
    if len(prints) > 1 and not allow_mixed_fingerprints:
        raise ValueError(f"{method} on {dataset}: records with {len(prints)} different fingerprints are not comparable")
    selection = select_setting(runs, metric, direction)
    return {} if selection is None else dict(sorted(selected_values(runs, metric, selection).items()))
