"""Pre-LayerNorm transformer over token ids, for discrete diffusion and autoregressive
language models.

Architecture: token embedding, ``depth`` pre-LN blocks
(Vaswani et al. 2017, arXiv:1706.03762, with LayerNorm before each sub-layer as in
GPT-2 / Xiong et al. 2020, arXiv:2002.04745) of multi-head self-attention
(``F.scaled_dot_product_attention``) and a GELU feed-forward, a final LayerNorm and a
linear head.

Positions (``positions=``): ``"rotary"`` (default) applies rotary position embeddings
(RoPE, Su et al. 2021, arXiv:2104.09864) to the queries and keys of every attention layer:
within each head, the pair of features ``(2i, 2i+1)`` at position ``p`` is rotated by the
angle ``p * base**(-2i / head_dim)`` with ``base = 10000``, so a query-key score depends on
the two positions only through their offset. This is what MDLM's DiT backbone uses; a
bidirectional masked model with learned absolute positions first has to learn the position
table before it can use neighbouring tokens, which at small budgets left MDLM on the
unigram plateau. ``"learned"`` keeps the previous scheme: a learned absolute positional
embedding (``seq_len`` x ``width``, N(0, 0.02) init) added to the token embedding.

Time conditioning (``cond=True``, used by MDLM/SEDD/D3PM): adaptive LayerNorm as in DiT
(Peebles & Xie 2022, arXiv:2212.09748) - a sinusoidal embedding of ``t`` goes through an
MLP to a vector ``c``, and each block regresses from ``c`` a shift, scale and gate for
each sub-layer: ``h + (1 + gate) * f((1 + scale) * LN(h) + shift)``. Departure from DiT:
the modulation layers are *not* zero-initialised (adaLN-Zero), and the gate is ``1 + gate``
rather than ``gate``; at initialisation this is an ordinary pre-LN transformer whose
output already depends on ``t``, instead of an identity map that ignores ``t``.

Masks: ``causal=True`` gives the autoregressive mask (position i attends to j <= i).
``forward(..., attn_mask=...)`` takes a boolean mask, ``True`` = may attend, of shape
``(L, L)`` or ``(N, L, L)`` (the SDPA convention), e.g. BD3-LM's block-causal mask; with
``causal=True`` both masks apply. Every query must be allowed at least one key, or SDPA
returns NaN for that row.

Position ids (``forward(..., positions=...)``, optional): the position of each input
token, an integer tensor of shape ``(L,)`` with values below ``seq_len``; by default
``0..L-1``. The input may then be longer than ``seq_len`` and repeat positions: BD3-LM's
vectorised training runs the noisy and the clean copy of a sequence side by side,
``x_t ⊕ x``, both at positions ``0..L-1`` (arXiv 2503.09573, Sec. 3.2).

Key-value cache (``forward(..., cache=KVCache(), store=k)``, optional): the keys and
values (after the rotary rotation) of the first ``k`` input positions are appended to
the cache, per block; a later call with the same cache lets its queries attend to the
cached positions as well. The key axis of ``attn_mask`` is then ``cache.length + L``
long, cached positions first; with ``causal=True`` query ``i`` sees every cached
position and the current ones up to ``i``; default positions continue after the cache
(``cache.length .. cache.length + L - 1``). Without ``cache`` every call is what it was
before these options existed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embeddings import TimeEmbedding, as_time_batch
from .flops import register_cpu_attention_flops
from .sizes import size_config

register_cpu_attention_flops()

POSITIONS: tuple[str, ...] = ("rotary", "learned")


def rotary_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of shape ``(length, head_dim // 2)`` for RoPE: entry
    ``[p, i]`` is ``cos/sin(p * base**(-2i / head_dim))``."""
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head dimension, got {head_dim}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


class KVCache:
    """Keys and values of positions already run through a :class:`Transformer`, one pair per
    block, each of shape ``(N, heads, length, head_dim)`` (see the module docstring).

    Filled by ``Transformer.forward(x, cache=cache, store=k)``; read by any later call with
    the same cache. Rows are the batch rows of the calls that filled it: a later call on a
    subset of rows passes :meth:`rows` of it.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return int(self.keys[0].shape[2]) if self.keys else 0

    @property
    def batch(self) -> int | None:
        """Number of batch rows cached (None while empty)."""
        return int(self.keys[0].shape[0]) if self.keys else None

    def rows(self, index: torch.Tensor) -> "KVCache":
        """A cache of the batch rows ``index`` (copies; the original is unchanged)."""
        out = KVCache()
        out.keys = [k[index] for k in self.keys]
        out.values = [v[index] for v in self.values]
        return out

    def repeat_interleave(self, repeats: int) -> "KVCache":
        """A cache in which every batch row is repeated ``repeats`` times in a row."""
        out = KVCache()
        out.keys = [k.repeat_interleave(repeats, dim=0) for k in self.keys]
        out.values = [v.repeat_interleave(repeats, dim=0) for v in self.values]
        return out

    def read(self, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return (self.keys[block], self.values[block]) if block < len(self.keys) else None

    def append(self, block: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if block < len(self.keys):
            self.keys[block] = torch.cat([self.keys[block], k], dim=2)
            self.values[block] = torch.cat([self.values[block], v], dim=2)
        elif block == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            raise ValueError(f"cache block {block} written before block {len(self.keys)}")


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each feature pair ``(2i, 2i+1)`` of ``x`` (``(..., L, head_dim)``) at position
    ``p`` by the angle whose cosine/sine are ``cos[p, i]`` / ``sin[p, i]`` (``(L, head_dim//2)``)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    Args:
        width: model dimension (divisible by ``heads``).
        heads: number of heads.
        dropout: attention-probability and output dropout (training only).
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None, block: int = 0, store: int = 0,
    ) -> torch.Tensor:
        """``x`` of shape ``(N, L, width)``; ``rope`` = ``(cos, sin)`` tables of shape
        ``(L, head_dim // 2)`` to rotate queries and keys, or None for no rotation.
        With ``cache``, the queries also attend to its entry ``block`` (placed first on the
        key axis), and the keys and values of the first ``store`` positions are appended."""
        n, length, width = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        keys, values = k, v
        past = cache.read(block) if cache is not None else None
        if past is not None:
            keys, values = torch.cat([past[0].to(k.dtype), k], dim=2), torch.cat([past[1].to(v.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        if cache is not None and store:
            cache.append(block, k[:, :, :store], v[:, :, :store])
        return self.drop(self.proj(out.transpose(1, 2).reshape(n, length, width)))


class Block(nn.Module):
    """Pre-LN transformer block, optionally with adaLN modulation from a vector ``c``.

    Args:
        width: model dimension.
        heads: attention heads.
        mlp_ratio: feed-forward hidden width / ``width``.
        dropout: dropout in attention and feed-forward.
        cond_dim: width of the conditioning vector, or None for an unconditioned block.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float, cond_dim: int | None) -> None:
        super().__init__()
        affine = cond_dim is None
        self.norm1 = nn.LayerNorm(width, elementwise_affine=affine)
        self.attn = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=affine)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width), nn.Dropout(dropout)
        )
        self.ada = nn.Linear(cond_dim, 6 * width) if cond_dim is not None else None

    def forward(
        self, h: torch.Tensor, mask: torch.Tensor | None, c: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None, block: int = 0, store: int = 0,
    ) -> torch.Tensor:
        if self.ada is None:
            h = h + self.attn(self.norm1(h), mask, rope, cache, block, store)
            return h + self.mlp(self.norm2(h))
        s1, b1, g1, s2, b2, g2 = self.ada(c)[:, None, :].chunk(6, dim=-1)
        h = h + (1 + g1) * self.attn(self.norm1(h) * (1 + s1) + b1, mask, rope, cache, block, store)
        return h + (1 + g2) * self.mlp(self.norm2(h) * (1 + s2) + b2)


class Transformer(nn.Module):
    """Transformer encoder/decoder over token ids: ``(N, L)`` ints -> ``(N, L, out)`` logits.

    Args:
        vocab_size: number of token ids accepted (include any [MASK] / absorbing token).
        seq_len: maximum sequence length (size of the positional tables); inputs may be
            shorter.
        out_dim: output features per position; default ``vocab_size``.
        size: preset name (``tiny``/``small``/``base``/``large``); see
            :func:`gmbench.backbones.sizes.size_config` (``kind="transformer"``).
        causal: if True, position i attends only to positions <= i (decoder-only / AR).
        (``forward`` also takes position ids and a key-value cache: module docstring.)
        cond: if True, ``forward(x, t)`` with ``t`` of shape ``(N,)`` (or a scalar),
            conditioning every block by adaLN (2212.09748); if False, ``forward(x)``.
        time_scale: multiplier applied to ``t`` before the sinusoidal encoding; the default
            1000 suits ``t`` in [0, 1], use 1.0 for integer step indices.
        positions: ``"rotary"`` (RoPE on queries/keys, base 10000; needs an even head
            dimension) or ``"learned"`` (learned absolute embedding added to the input);
            see the module docstring.

    Attributes:
        out: the final ``nn.Linear`` head.
    """

    def __init__(
        self, vocab_size: int, seq_len: int, out_dim: int | None = None, size: str = "small",
        causal: bool = False, cond: bool = False, time_scale: float = 1000.0,
        positions: str = "rotary",
    ) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; expected one of {POSITIONS}")
        cfg = size_config("transformer", size)
        width, depth, heads = cfg["width"], cfg["depth"], cfg["heads"]
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.out_dim = vocab_size if out_dim is None else out_dim
        self.size, self.causal, self.cond, self.positions = size, causal, cond, positions

        self.tok = nn.Embedding(vocab_size, width)
        if positions == "learned":
            self.pos = nn.Parameter(torch.zeros(seq_len, width))
            nn.init.normal_(self.pos, std=0.02)
        else:
            if width % heads:
                raise ValueError(f"width {width} not divisible by heads {heads}")
            self.pos = None
            cos, sin = rotary_tables(seq_len, width // heads)
            # Not saved in state_dict: recomputed from (seq_len, head_dim) at construction.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.drop = nn.Dropout(cfg["dropout"])
        self.time_embed = TimeEmbedding(width, width, scale=time_scale) if cond else None
        cond_dim = width if cond else None
        self.blocks = nn.ModuleList(
            Block(width, heads, cfg["mlp_ratio"], cfg["dropout"], cond_dim) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(width, elementwise_affine=not cond)
        self.ada_out = nn.Linear(width, 2 * width) if cond else None
        self.out = nn.Linear(width, self.out_dim)

    def _mask(
        self, attn_mask: torch.Tensor | None, n: int, length: int, device: torch.device, past: int = 0
    ) -> torch.Tensor | None:
        keys = past + length
        mask = None
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool:
                raise TypeError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
            if attn_mask.shape[-2:] != (length, keys) or attn_mask.ndim not in (2, 3) or (
                attn_mask.ndim == 3 and attn_mask.shape[0] != n
            ):
                raise ValueError(
                    f"attn_mask must have shape ({length}, {keys}) or ({n}, {length}, {keys}), "
                    f"got {tuple(attn_mask.shape)}"
                )
            mask = attn_mask.to(device)
        if self.causal:
            tril = torch.ones(length, keys, dtype=torch.bool, device=device).tril(diagonal=past)
            mask = tril if mask is None else mask & tril
        if mask is not None and mask.ndim == 3:
            mask = mask[:, None]  # broadcast over heads
        return mask

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | float | None = None, attn_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None, cache: KVCache | None = None, store: int = 0,
    ) -> torch.Tensor:
        """Map token ids ``x`` of shape ``(N, L)``, ``L <= seq_len`` (and ``t`` of shape
        ``(N,)`` when ``cond``) to ``(N, L, out_dim)``; ``attn_mask``, ``positions``,
        ``cache`` and ``store`` as in the module docstring."""
        if x.ndim != 2:
            raise ValueError(f"expected token ids of shape (N, L), got {tuple(x.shape)}")
        n, length = x.shape
        past = cache.length if cache is not None else 0
        if cache is not None and cache.batch is not None and cache.batch != n:
            raise ValueError(f"the cache holds {cache.batch} rows but the input has {n}")
        if not 0 <= int(store) <= length or (store and cache is None):
            raise ValueError(f"store must be in 0..{length} and needs a cache, got {store}")
        if positions is None:
            if past + length > self.seq_len:
                what = f"sequence length {length}" + (f" after {past} cached positions" if past else "")
                raise ValueError(f"{what} exceeds seq_len={self.seq_len}")
        else:
            positions = positions.to(device=x.device, dtype=torch.long)
            if positions.shape != (length,):
                raise ValueError(f"positions must have shape ({length},), got {tuple(positions.shape)}")
            if length and (int(positions.min()) < 0 or int(positions.max()) >= self.seq_len):
                raise ValueError(f"positions must lie in 0..{self.seq_len - 1}")
        c = None
        if self.cond:
            if t is None:
                raise TypeError("this Transformer was built with cond=True; call it as forward(x, t)")
            c = F.silu(self.time_embed(as_time_batch(t, n, x.device)))
        elif t is not None:
            raise TypeError("this Transformer was built with cond=False; call it as forward(x)")
        mask = self._mask(attn_mask, n, length, x.device, past)
        h = self.tok(x)
        rope = None
        if self.pos is not None:
            h = h + (self.pos[past : past + length] if positions is None else self.pos[positions])
        elif positions is None:
            rope = (self.rope_cos[past : past + length], self.rope_sin[past : past + length])
        else:
            rope = (self.rope_cos[positions], self.rope_sin[positions])
        h = self.drop(h)
        for i, block in enumerate(self.blocks):
            h = block(h, mask, c, rope, cache, i, int(store))
        h = self.norm_out(h)
        if self.ada_out is not None:
            scale, shift = self.ada_out(c)[:, None, :].chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        return self.out(h)
