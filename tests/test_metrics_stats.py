"""gmbench.stats: t-intervals over seeds and direction-aware paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gmbench.stats import paired_compare, seed_values, summarize


def test_summarize_gives_the_student_t_interval():
    s = summarize([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * sd(=1) / sqrt(3)
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert (s.low, s.high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert "±" in str(s)


def test_one_seed_has_no_interval_and_bad_input_is_refused():
    s = summarize([0.5])
    assert (s.n, s.mean, s.low, s.high) == (1, 0.5, None, None)
    with pytest.raises(ValueError, match="no values"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, math.nan])


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = sum(1 for _ in range(2000) if (s := summarize(rng.normal(3.0, 2.0, size=4))).low <= 3.0 <= s.high)
    assert 0.93 < hits / 2000 < 0.97


def _seeds(values):
    return dict(enumerate(values))


def test_pairing_by_seed_separates_what_seed_noise_hides():
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 1.0, size=6)  # seed effects both methods share
    a = _seeds(10 + shared - 0.3 + rng.normal(0, 0.05, size=6))
    b = _seeds(10 + shared + rng.normal(0, 0.05, size=6))
    lower = paired_compare(a, b, "lower", names=("ddim", "ddpm"))
    assert lower.better == "a" and lower.p_value < 0.01 and lower.verdict.startswith("ddim is better")
    assert paired_compare(a, b, "higher").better == "b"
    # unpaired, the two intervals overlap: seed noise alone would hide the difference
    sa, sb = summarize(a.values()), summarize(b.values())
    assert sa.high > sb.low
    assert paired_compare(a, b, "lower", test="bootstrap").better == "a"


def test_no_winner_within_noise_and_too_few_common_seeds():
    rng = np.random.default_rng(2)
    a, b = _seeds(rng.normal(0, 1, 5)), _seeds(rng.normal(0, 1, 5))
    c = paired_compare(a, b, "lower")
    assert c.better is None and c.verdict.startswith("no difference beyond seed noise")
    few = paired_compare({0: 1.0, 1: 2.0}, {1: 3.0, 2: 4.0}, "lower")
    assert few.better is None and few.seeds == (1,) and "need at least 2 seeds" in few.verdict
    with pytest.raises(ValueError, match="direction"):
        paired_compare(a, b, "smaller")


def test_identical_differences_are_decided_without_a_test():
    assert paired_compare({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}, "lower").better == "a"
    assert paired_compare({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}, "lower").better is None


def _rec(method, seed, value, fp="f1", sampler="s", nfe=10):
    return {"method": method, "dataset": "d", "seed": seed, "status": "ok", "fingerprint": fp,
            "metrics": [{"name": "fid", "value": value, "sampler": sampler, "nfe": nfe},
                        {"name": "fid", "value": value + 5, "sampler": sampler, "nfe": 2 * nfe}]}


def test_seed_values_from_records_best_or_fixed_setting_and_fingerprint_guard():
    recs = [_rec("m", 0, 1.0), _rec("m", 1, 2.0), _rec("other", 0, 0.0), dict(_rec("m", 2, 9.0), status="failed")]
    assert seed_values(recs, "m", "d", "fid") == {0: 1.0, 1: 2.0}
    assert seed_values(recs, "m", "d", "fid", nfe=20) == {0: 6.0, 1: 7.0}
    assert seed_values(recs, "m", "d", "fid", direction="higher") == {0: 6.0, 1: 7.0}
    with pytest.raises(ValueError, match="fingerprints"):
        seed_values(recs + [_rec("m", 3, 1.0, fp="f2")], "m", "d", "fid")
