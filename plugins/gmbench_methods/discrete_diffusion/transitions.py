"""Keep-or-jump transition matrices over tokens: the absorbing and uniform families.

Shared by :mod:`.d3pm` (discrete time, Austin et al. 2021, arXiv 2107.03006) and
:mod:`.sedd` (continuous time, Lou, Meng & Ermon 2023, arXiv 2310.16834). Both papers'
absorbing and uniform processes are one family of row-stochastic matrices over ``K``
states (row = from, column = to, D3PM's convention ``q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t)``):

    ``M(a) = a I + (1 - a) 1 pi^T``

keep the token with probability ``a``, otherwise jump to a state drawn from ``pi``:

* ``absorbing``: ``K = V + 1`` states, the data tokens ``0..V-1`` and ``[MASK] = V``;
  ``pi = e_[MASK]`` (D3PM Sec. 3.1 "absorbing state", SEDD's "absorb" graph);
* ``uniform``: ``K = V`` states, ``pi = 1 / K`` (D3PM's uniform ``Q_t = (1 - beta_t) I +
  beta_t / K 1 1^T``, Hoogeboom et al. 2021; SEDD's "uniform" graph).

Because ``1 pi^T`` is idempotent (``pi`` sums to 1), ``M(a) M(b) = M(a b)``: the t-step
marginal of D3PM is ``Qbar_t = M(prod_s (1 - beta_s))``, a stride ``s -> t`` of the chain
is ``M(abar_t / abar_s)``, and SEDD's ``exp(sigma Q)`` for the rate matrix
``Q = 1 pi^T - I`` is ``M(e^{-sigma})`` (the series of ``e^{-sigma} e^{sigma 1 pi^T}``).
The same identity with ``a > 1`` gives ``exp(-sigma Q) = M(e^{sigma})``, which SEDD's
Tweedie step uses. All probabilities here are float64.
"""

from __future__ import annotations

import math

import torch

KINDS = ("absorbing", "uniform")


class KeepOrJump:
    """The family ``M(a) = a I + (1 - a) 1 pi^T`` over the states of a ``V``-token vocabulary.

    Args:
        kind: ``"absorbing"`` (``K = V + 1``, jumps go to ``[MASK] = V``) or ``"uniform"``
            (``K = V``, jumps go to a uniformly drawn token).
        vocab_size: ``V``, the number of data tokens.
    """

    def __init__(self, kind: str, vocab_size: int):
        if kind not in KINDS:
            raise ValueError(f"unknown transition {kind!r}; valid: {', '.join(KINDS)}")
        if int(vocab_size) < 2:
            raise ValueError(f"need a vocabulary of at least 2 tokens, got {vocab_size}")
        self.kind = kind
        self.vocab_size = int(vocab_size)
        self.absorbing = kind == "absorbing"
        self.num_states = self.vocab_size + 1 if self.absorbing else self.vocab_size
        #: the [MASK] id (absorbing) or None
        self.mask_id = self.vocab_size if self.absorbing else None
        pi = torch.zeros(self.num_states, dtype=torch.float64)
        if self.absorbing:
            pi[self.mask_id] = 1.0
        else:
            pi[:] = 1.0 / self.num_states
        #: the jump (and limiting) distribution ``pi``
        self.pi = pi

    # -- matrices (tests, brute force) ---------------------------------------------------

    def matrix(self, a: float) -> torch.Tensor:
        """``M(a)``, shape ``(K, K)``, float64; row-stochastic for ``0 <= a <= 1``."""
        eye = torch.eye(self.num_states, dtype=torch.float64)
        return a * eye + (1.0 - a) * self.pi.expand(self.num_states, -1)

    def rate_matrix(self) -> torch.Tensor:
        """SEDD's rate matrix ``Q = 1 pi^T - I`` (row = from; rows sum to 0), so ``exp(s Q) = M(e^{-s})``."""
        return self.pi.expand(self.num_states, -1) - torch.eye(self.num_states, dtype=torch.float64)

    # -- rows of M(a) for token tensors ----------------------------------------------------

    def _col(self, a: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        a = torch.as_tensor(a, dtype=torch.float64, device=x.device)
        return a.reshape(*a.shape, *([1] * (x.dim() + 1 - a.dim())))  # broadcast over positions and states

    def probs(self, x: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        """Row ``x`` of ``M(a)``: ``a onehot(x) + (1 - a) pi``, shape ``(*x.shape, K)``.

        ``a`` is a scalar or one value per row of ``x`` (shape ``(N,)``)."""
        col = self._col(a, x)
        onehot = torch.nn.functional.one_hot(x.long(), self.num_states).double()
        return col * onehot + (1.0 - col) * self.pi.to(x.device)

    def to_state_probs(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        """``M(a)[x, y]`` elementwise for token tensors ``x`` and ``y`` of one shape."""
        col = self._col(a, x).squeeze(-1)
        return col * (x == y).double() + (1.0 - col) * self.pi.to(x.device)[y]

    def sample(self, x: torch.Tensor, a: torch.Tensor | float,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw from row ``x`` of ``M(a)`` per token: keep with probability ``a``, else draw from ``pi``.

        Two float64 uniforms per token whatever the kind (``generator=None``: torch's global RNG)."""
        col = self._col(a, x).squeeze(-1)
        u = _rand((2, *x.shape), generator).to(x.device)
        jump = u[0] >= col  # P(jump) = 1 - a
        if self.absorbing:
            target = torch.full_like(x, self.mask_id)
        else:
            target = (u[1] * self.num_states).long().clamp(max=self.num_states - 1)
        return torch.where(jump, target, x)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator, device=None) -> torch.Tensor:
        """Draws from ``pi`` (all ``[MASK]``, or uniform tokens)."""
        if self.absorbing:
            return torch.full(shape, self.mask_id, dtype=torch.long, device=device)
        u = _rand(shape, generator)
        return (u * self.num_states).long().clamp(max=self.num_states - 1).to(device)

    def prior_kl(self, x0: torch.Tensor, a: float) -> torch.Tensor:
        """``KL(M(a)[x0, :] || pi)`` summed over the positions of each row of ``x0`` (N, L), nats.

        Zero when ``a = 0``; infinite for the absorbing kind when ``a > 0`` (``pi`` puts no
        mass on data tokens)."""
        q = self.probs(x0, float(a))
        pi = self.pi.to(x0.device).expand_as(q)
        with torch.no_grad():
            terms = torch.where(q > 0, q * (q.log() - pi.log()), torch.zeros_like(q))
        return terms.sum((-1, -2))


def _rand(shape, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, dtype=torch.float64)
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)


def log_or_neg_inf(p: torch.Tensor) -> torch.Tensor:
    """``log p`` with ``log 0 = -inf`` (for constants that carry no gradient)."""
    return torch.where(p > 0, p.clamp_min(1e-300).log(), torch.full_like(p, -math.inf))
