"""The synthetic language's exact likelihood, entropy rate and sampler.

Every check here would fail if the maths were wrong: probabilities must sum to
one over all sequences, agree with an independent path-enumeration, with the
frequencies of the sampler and of a plain long stream, and bound the entropy rate.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from gmbench.data.synthlang import ALPHABET, SPACE_ID, VOCAB_SIZE, SyntheticLanguage

LN2 = math.log(2)


def tiny(**kw) -> SyntheticLanguage:
    args = dict(n_words=4, min_word_len=1, max_word_len=2, concentration=0.5, n_train=10, n_test=10)
    return SyntheticLanguage(**{**args, **kw})


def brute_force_prob(d: SyntheticLanguage, text: str) -> float:
    """P(window == text) by summing over every start (word, offset) and word path.

    Independent of the forward algorithm: plain recursion over the lexicon, with
    the start law mu(w, j) = pi(w) / E[len + 1] computed here from scratch.
    """
    pi, p, words = d.stationary, d.transition, d.words
    mean_chars = sum(pi[w] * (len(words[w]) + 1) for w in range(len(words)))

    def rest_prob(w: int, spelled: str, target: str) -> float:
        # the chain is in word w with `spelled` still to emit; P(next chars == target)
        if len(target) <= len(spelled):
            return 1.0 if spelled.startswith(target) else 0.0
        if not target.startswith(spelled):
            return 0.0
        remaining = target[len(spelled) :]
        return sum(p[w, v] * rest_prob(v, words[v] + " ", remaining) for v in range(len(words)))

    total = 0.0
    for w, word in enumerate(words):
        spelled = word + " "
        for j in range(len(spelled)):
            total += pi[w] / mean_chars * rest_prob(w, spelled[j:], text)
    return total


def test_alphabet_and_spec():
    d = SyntheticLanguage()
    assert VOCAB_SIZE == 27 and ALPHABET[SPACE_ID] == " " and SPACE_ID == 0
    spec = d.spec()
    assert spec.modality == "text" and spec.shape == (64,) and spec.vocab_size == 27
    assert d.primary_metric == "test_bpc"
    assert len(set(d.words)) == 48 and all(2 <= len(w) <= 7 for w in d.words)
    assert (d.transition > 0).all() and np.allclose(d.transition.sum(1), 1.0)
    assert np.allclose(d.stationary @ d.transition, d.stationary)
    assert d.encode("ab z").tolist() == [1, 2, 0, 26]
    assert d.decode(d.encode("hello world")) == "hello world"


def test_probabilities_sum_to_one_over_all_sequences():
    d = tiny(seq_len=3)
    every = torch.tensor(list(itertools.product(range(VOCAB_SIZE), repeat=3)))
    assert every.shape == (27**3, 3)
    lp = d.log_prob(every)
    assert not torch.isnan(lp).any()
    assert abs(lp.exp().sum().item() - 1.0) < 1e-9
    # and the same holds for every shorter window of the same source
    for length in (1, 2):
        every = torch.tensor(list(itertools.product(range(VOCAB_SIZE), repeat=length)))
        assert abs(d.log_prob(every).exp().sum().item() - 1.0) < 1e-9


@pytest.mark.parametrize("kw", [dict(), dict(n_words=6, max_word_len=3, seq_len=9, data_seed=3)])
def test_log_prob_matches_brute_force(kw):
    d = tiny(**{"seq_len": 6, **kw})
    windows = d.sample(40, np.random.default_rng(0))
    # also windows with one character changed: some become impossible, some not
    mutated = windows.clone()
    mutated[:, 2] = torch.randint(0, VOCAB_SIZE, (40,), generator=torch.Generator().manual_seed(1))
    x = torch.cat([windows, mutated])
    lp = d.log_prob(x)
    for row, value in zip(x, lp):
        expected = brute_force_prob(d, d.decode(row))
        if expected == 0.0:
            assert value.item() == -math.inf
        else:
            assert value.item() == pytest.approx(math.log(expected), abs=1e-10)


def test_sampler_frequencies_match_log_prob():
    d = tiny(seq_len=3)
    n = 200_000
    x = d.sample(n, np.random.default_rng(5))
    counts = Counter(map(tuple, x.tolist()))
    seqs = torch.tensor(list(counts))
    expected = d.log_prob(seqs).exp().numpy() * n
    observed = np.array([counts[tuple(s)] for s in seqs.tolist()])
    assert np.isfinite(expected).all() and (expected > 0).all()  # never samples the impossible
    big = expected > 30
    z = (observed[big] - expected[big]) / np.sqrt(expected[big])
    assert np.abs(z).max() < 5.0, z


def test_uniform_offset_of_a_plain_stream_matches_log_prob():
    """The start law mu is what a uniform offset into a long stream sees.

    The stream is built here directly from the word chain (independent of the
    class's sampler), and every character position is a window start.
    """
    d = tiny(seq_len=2, data_seed=7)
    rng = np.random.default_rng(11)
    cum = np.cumsum(d.transition, axis=1)
    w = rng.choice(len(d.words), p=d.stationary)
    pieces = []
    for _ in range(300_000):
        pieces.append(d.words[w] + " ")
        w = min(int(np.searchsorted(cum[w], rng.random())), len(d.words) - 1)
    stream = "".join(pieces)
    counts = Counter(stream[i : i + 2] for i in range(len(stream) - 1))
    total = sum(counts.values())
    seqs = list(counts)
    prob = d.log_prob(torch.stack([d.encode(s) for s in seqs])).exp().numpy()
    freq = np.array([counts[s] / total for s in seqs])
    assert abs(prob.sum() - 1.0) < 1e-9  # every observed pair is possible, and nothing else is
    assert np.abs(freq - prob).sum() < 0.01  # total variation of overlapping windows


def test_entropy_rate_bounds_and_is_approached_by_window_nll():
    d = SyntheticLanguage()
    h = d.entropy_rate_bits()
    assert 0.3 < h < 2.0
    # closed form recomputed from the definitions
    pi, p = d.stationary, d.transition
    lengths = np.array([len(w) + 1 for w in d.words])
    assert h == pytest.approx(-(pi[:, None] * p * np.log2(p)).sum() / (pi @ lengths), rel=1e-12)

    def mc_bits_per_char(seq_len: int, n: int) -> tuple[float, float]:
        long = SyntheticLanguage(seq_len=seq_len, n_test=n)
        per_char = -long.log_prob(long.split("test").x).numpy() / (seq_len * LN2)
        return per_char.mean(), per_char.std() / math.sqrt(n)

    mean64, se64 = mc_bits_per_char(64, 1000)
    mean512, se512 = mc_bits_per_char(512, 400)
    # H(X_1..X_L) / L decreases to h from above; the excess is O(1/L)
    assert mean64 - 3 * se64 > h
    assert mean512 - 3 * se512 > h
    assert mean512 < mean64
    assert mean512 < 1.03 * h


def test_determinism_and_seed_dependence():
    a, b, c = SyntheticLanguage(n_train=50, n_test=20), SyntheticLanguage(n_train=50, n_test=20), SyntheticLanguage(
        data_seed=1, n_train=50, n_test=20
    )
    assert a.words == b.words and np.array_equal(a.transition, b.transition)
    assert torch.equal(a.split("train").x, b.split("train").x)
    assert torch.equal(a.split("test").x, b.split("test").x)
    assert not torch.equal(a.split("train").x[:20], a.split("test").x)  # different generators
    assert a.words != c.words
    assert not torch.equal(a.split("train").x, c.split("train").x)
    assert a.entropy_rate_bits() != c.entropy_rate_bits()
    # the split size does not change the source or the other split
    d = SyntheticLanguage(n_train=10, n_test=20)
    assert torch.equal(d.split("test").x, a.split("test").x)
    x = a.split("train").x
    assert x.dtype == torch.long and x.shape == (50, 64) and int(x.min()) >= 0 and int(x.max()) < 27
    assert a.fingerprint_fields()["seq_len"] == 64


def test_impossible_sequences_get_minus_inf():
    d = SyntheticLanguage()
    # a double space, and a run of letters longer than any word, cannot occur
    impossible = torch.stack([d.encode("ab  cd" + "x" * 2), d.encode("a" * (d.max_word_len + 1))])
    lp = d.log_prob(impossible)
    assert lp.tolist() == [-math.inf, -math.inf]
    ok = d.log_prob(d.split("test").x[:5])
    assert torch.isfinite(ok).all() and (ok < 0).all()


def test_invalid_input_is_rejected():
    d = tiny(seq_len=3)
    with pytest.raises(ValueError, match="token ids"):
        d.log_prob(torch.tensor([[0, 1, 27]]))
    with pytest.raises(ValueError, match="token ids"):
        d.log_prob(torch.tensor([[0, -1, 2]]))
    with pytest.raises(ValueError, match="shape"):
        d.log_prob(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        d.encode("Hello")
    with pytest.raises(ValueError):
        SyntheticLanguage(n_words=30, min_word_len=1, max_word_len=1)
