"""A synthetic language whose likelihood and entropy rate are exactly computable.

The source is a seeded word-level Markov chain spelled out in characters, in the
spirit of Shannon's Markov approximations to English (1948). A seeded lexicon of
distinct words over ``a..z`` is drawn; a word-bigram transition matrix is drawn
from a seeded Dirichlet and mixed with a small uniform floor (so the chain is
irreducible and every word pair has positive probability); the character stream
is the word chain with a single space after every word.

Token ids: ``0`` is the space, ``1..26`` are ``a..z``. That is the sorted-alphabet
order a character vocabulary built from text8 gets, so a model or metric sees the
same ids on both.

An example is a window of ``seq_len`` characters cut at a uniformly random offset
of a stationary stream, so windows usually start and end mid-word. Seen as a
hidden Markov model whose hidden state is (word, position in the word, the
trailing space counting as the last position) with deterministic emissions, such a
window starts in the state distribution ``mu(w, j) = pi(w) / E[len + 1]``
(``pi`` the stationary word distribution, the expectation under ``pi``): a uniform
offset lands in word ``w`` in proportion to how often ``w`` occurs times how many
characters it spans. ``log_prob`` runs the forward algorithm from ``mu``; the
sampler draws the first state from ``mu`` directly, which is the exact law of a
uniform offset into an infinitely long stationary stream.

Because spaces delimit words, the character stream determines the word stream,
so the entropy rate is ``H(word chain) / E[len + 1]`` bits per character.
"""

from __future__ import annotations

import numpy as np
import torch

from gmbench.data.base import Dataset, DataSpec, Split

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
SPACE_ID = 0
VOCAB_SIZE = len(ALPHABET)

_SEED_STRUCTURE, _SEED_TRAIN, _SEED_TEST, _SEED_VAL = 0, 1, 2, 3
_CHUNK = 512  # rows per forward pass on CPU


def _rng(data_seed: int, purpose: int) -> np.random.Generator:
    # Separate, fixed streams for the source itself and each split, so changing
    # n_train never changes the lexicon or the test windows.
    return np.random.default_rng(np.random.SeedSequence([int(data_seed), purpose]))


class SyntheticLanguage(Dataset):
    """Windows of a seeded word-bigram language over 27 characters (see module doc).

    Args:
        data_seed: seeds the lexicon, the transition matrix and both splits.
        seq_len: characters per example window.
        n_train, n_test: number of windows in each split.
        n_words: lexicon size.
        min_word_len, max_word_len: word lengths are uniform in this range.
        concentration: Dirichlet concentration of each transition row (small is sparse).
        floor: weight of the uniform distribution mixed into every row.
    """

    name = "synthlang"
    suite_default = True
    modality = "text"
    primary_metric = "test_bpc"  # the convention for language models; sample metrics sit beside it
    description = (
        "Synthetic language: a seeded word-bigram Markov source spelled in 27 characters "
        "(space + a-z), windows cut at random offsets of the stationary stream. "
        "Exact log-probability of any window and exact entropy rate (the floor for "
        "bits per character)."
    )
    citation = (
        "Word-level Markov source in the manner of C. E. Shannon, 'A Mathematical Theory "
        "of Communication', Bell System Technical Journal 27 (1948), section 3."
    )

    def __init__(
        self,
        data_seed: int = 0,
        seq_len: int = 64,
        n_train: int = 20000,
        n_test: int = 2000,
        n_words: int = 48,
        min_word_len: int = 2,
        max_word_len: int = 7,
        concentration: float = 0.3,
        floor: float = 1e-3,
    ):
        super().__init__(data_seed)
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if not 1 <= min_word_len <= max_word_len:
            raise ValueError(f"need 1 <= min_word_len <= max_word_len, got {min_word_len}, {max_word_len}")
        possible = sum(26**n for n in range(min_word_len, max_word_len + 1))
        if not 1 <= n_words <= possible:
            raise ValueError(f"n_words must be in 1..{possible} for word lengths {min_word_len}..{max_word_len}")
        if not 0.0 < floor <= 1.0 or concentration <= 0:
            raise ValueError("need 0 < floor <= 1 and concentration > 0")
        self.seq_len = seq_len
        self.n_train, self.n_test = n_train, n_test
        self.n_words, self.min_word_len, self.max_word_len = n_words, min_word_len, max_word_len
        self.concentration, self.floor = concentration, floor
        self._build_source()

    # The source ----------------------------------------------------------------

    def _build_source(self) -> None:
        rng = _rng(self.data_seed, _SEED_STRUCTURE)
        words: list[str] = []
        seen: set[str] = set()
        while len(words) < self.n_words:  # distinct words, so the spelling identifies the word
            length = int(rng.integers(self.min_word_len, self.max_word_len + 1))
            word = "".join(ALPHABET[1 + i] for i in rng.integers(0, 26, size=length))
            if word not in seen:
                seen.add(word)
                words.append(word)
        k = self.n_words
        dirichlet = rng.dirichlet(np.full(k, self.concentration), size=k)
        #: word-bigram transition matrix, rows sum to 1, every entry >= floor / K
        self.transition = (1.0 - self.floor) * dirichlet + self.floor / k
        self.transition /= self.transition.sum(axis=1, keepdims=True)
        #: the lexicon, in word-id order
        self.words = words
        #: stationary distribution of the word chain
        self.stationary = _stationary(self.transition)

        # Flat HMM state layout: word w owns the contiguous block of states
        # (w, 0), ..., (w, len_w), the last being its trailing space. So the
        # successor of a non-final state is simply the next index.
        self.word_len = np.array([len(w) for w in words])
        self.start_idx = np.concatenate([[0], np.cumsum(self.word_len + 1)[:-1]])
        self.end_idx = self.start_idx + self.word_len
        self.emit = np.array([ALPHABET.index(c) for w in words for c in w + " "])
        self.state_word = np.repeat(np.arange(k), self.word_len + 1)
        self.mean_chars_per_word = float(self.stationary @ (self.word_len + 1))
        #: initial state distribution of a window (module doc)
        self.state_dist = self.stationary[self.state_word] / self.mean_chars_per_word
        self._tables: dict[torch.device, tuple] = {}

    def spec(self) -> DataSpec:
        return DataSpec(name=self.name, modality="text", shape=(self.seq_len,), vocab_size=VOCAB_SIZE)

    def word_entropy_bits(self) -> float:
        """Entropy of the next word given the previous one, under the stationary law."""
        p = self.transition
        return float(-(self.stationary[:, None] * p * np.log2(p)).sum())

    def entropy_rate_bits(self) -> float:
        # Characters determine words (spaces delimit, words are distinct), so the
        # character stream carries exactly the word chain's information, spread
        # over E[len + 1] characters per word.
        return self.word_entropy_bits() / self.mean_chars_per_word

    # Sampling ---------------------------------------------------------------------

    def sample(self, n: int, rng: np.random.Generator | int, seq_len: int | None = None) -> torch.Tensor:
        """``n`` independent windows of ``seq_len`` characters, shape ``(n, seq_len)``."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        length = self.seq_len if seq_len is None else seq_len
        cum = np.cumsum(self.transition, axis=1)
        cum[:, -1] = 1.0  # guard against round-off when inverting the CDF
        state = rng.choice(len(self.emit), size=n, p=self.state_dist)
        out = np.empty((n, length), dtype=np.int64)
        for t in range(length):
            out[:, t] = self.emit[state]
            word = self.state_word[state]
            at_end = state == self.end_idx[word]
            state = state + 1  # inside a word: the next state is the next index
            if at_end.any():  # after a trailing space: draw the next word
                u = rng.random(int(at_end.sum()))
                nxt = (cum[word[at_end]] < u[:, None]).sum(axis=1)
                state[at_end] = self.start_idx[nxt]
        return torch.from_numpy(out)

    def sample_stream(self, n_chars: int, rng: np.random.Generator | int) -> torch.Tensor:
        """One stationary stream of ``n_chars`` characters, shape ``(n_chars,)``."""
        return self.sample(1, rng, seq_len=n_chars)[0]

    def _load(self, split: str) -> Split:
        purpose, n = (_SEED_TRAIN, self.n_train) if split == "train" else (_SEED_TEST, self.n_test)
        return Split(x=self.sample(n, _rng(self.data_seed, purpose)))

    def _load_val(self) -> Split:
        # a fresh draw from the source, as large as the test split
        return Split(x=self.sample(self.n_test, _rng(self.data_seed, _SEED_VAL)))

    # Exact likelihood ---------------------------------------------------------------

    def _device_tables(self, device: torch.device) -> tuple:
        if device not in self._tables:
            f64 = dict(dtype=torch.float64, device=device)
            log_emit = torch.full((VOCAB_SIZE, len(self.emit)), float("-inf"), **f64)
            log_emit[torch.as_tensor(self.emit), torch.arange(len(self.emit))] = 0.0
            self._tables[device] = (
                log_emit,
                torch.as_tensor(self.state_dist, **f64).log(),
                torch.as_tensor(self.transition, **f64),
                torch.as_tensor(self.start_idx, device=device),
                torch.as_tensor(self.end_idx, device=device),
            )
        return self._tables[device]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-probability in nats of each window ``x`` of shape ``(N, L)``.

        Any ``L >= 1`` is allowed (windows of the same stationary source). Returns
        float64 of shape ``(N,)``; sequences the source cannot produce get ``-inf``.
        """
        x = torch.as_tensor(x)
        if x.dim() != 2:
            raise ValueError(f"log_prob expects token ids of shape (N, L), got shape {tuple(x.shape)}")
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"log_prob expects integer token ids, got dtype {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= VOCAB_SIZE):
            raise ValueError(
                f"token ids must be in 0..{VOCAB_SIZE - 1} (0 = space, 1..26 = a..z), "
                f"got values in {int(x.min())}..{int(x.max())}"
            )
        n, length = x.shape
        if length == 0:
            return torch.zeros(n, dtype=torch.float64, device=x.device)
        x = x.long()
        if x.device.type == "cpu" and n > _CHUNK:
            # chunks of rows keep the (rows, states) work arrays in cache: several
            # times faster than one pass over a large batch
            return torch.cat([self._forward(part) for part in x.split(_CHUNK)])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        log_emit, log_mu, trans, start_idx, end_idx = self._device_tables(x.device)
        length = x.shape[1]

        # alpha[i, s] = log P(x_1..x_t, state_t = s). Emissions are deterministic:
        # log_emit[c, s] is 0 if state s spells c, else -inf.
        alpha = log_mu + log_emit[x[:, 0]]
        for t in range(1, length):
            # inside a word, (w, j-1) -> (w, j) with probability 1: the next index.
            # The values this shift puts on word starts are overwritten just below.
            pred = torch.nn.functional.pad(alpha[:, :-1], (1, 0), value=float("-inf"))
            # after a trailing space, (w, end) -> (v, 0) with probability P[w, v]:
            # a log-sum-exp over w, done as a matmul after shifting by the row max
            # (clamped so that an all -inf row stays -inf instead of becoming NaN)
            ends = alpha[:, end_idx]
            shift = ends.amax(dim=1, keepdim=True).clamp_min(-1e300)
            pred[:, start_idx] = shift + torch.log((ends - shift).exp() @ trans)
            alpha = pred + log_emit[x[:, t]]
        return torch.logsumexp(alpha, dim=1)

    # Text helpers -------------------------------------------------------------------

    @staticmethod
    def encode(text: str) -> torch.Tensor:
        """Characters (space, a-z) to ids, shape ``(len(text),)``."""
        bad = sorted(set(text) - set(ALPHABET))
        if bad:
            raise ValueError(f"characters {bad!r} are not in the synthlang alphabet (space, a-z)")
        return torch.tensor([ALPHABET.index(c) for c in text], dtype=torch.long)

    @staticmethod
    def decode(ids) -> str | list[str]:
        """Ids to text; a 2-D batch gives a list of strings."""
        ids = torch.as_tensor(ids)
        if ids.dim() == 2:
            return [SyntheticLanguage.decode(row) for row in ids]
        values = ids.tolist()
        if any(not 0 <= v < VOCAB_SIZE for v in values):
            raise ValueError(f"token ids must be in 0..{VOCAB_SIZE - 1}")
        return "".join(ALPHABET[v] for v in values)

    def fingerprint_fields(self) -> dict:
        fields = super().fingerprint_fields()
        fields.update(
            seq_len=self.seq_len,
            n_words=self.n_words,
            word_len=[self.min_word_len, self.max_word_len],
            concentration=self.concentration,
            floor=self.floor,
        )
        return fields


def _stationary(p: np.ndarray) -> np.ndarray:
    """Stationary distribution of an irreducible stochastic matrix ``p``."""
    k = p.shape[0]
    # pi (P - I) = 0 with one equation replaced by sum(pi) = 1 (unique: irreducible)
    a = p.T - np.eye(k)
    a[-1, :] = 1.0
    b = np.zeros(k)
    b[-1] = 1.0
    pi = np.linalg.solve(a, b)
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()
