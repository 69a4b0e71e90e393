"""What a training step costs: every aten op counted, not only matrix products.

``torch.utils.flop_counter.FlopCounterMode`` counts matrix products (and
convolutions, attention) only: the same 128x128 products written as a
broadcast multiply and a sum were charged 262,144 FLOPs instead of ~1e8.
:class:`OpCostMode` is a lean ``TorchDispatchMode`` that charges

* every op with a formula in torch's ``flop_registry`` (matmul, conv,
  attention, plus gmbench's own in ``gmbench.backbones.flops``) by that formula;
* dense linear algebra, pairwise distances, sorting and FFTs by the leading term of
  their textbook operation counts (:data:`_FORMULAS`: e.g. ``2 n^3`` for an inverse,
  ``3 P R M`` for ``cdist``, ``n log2 n`` per sorted row), which the element rule
  would charge as ``n^2`` or ``P R`` — 500-5000x too little at n = 512;
* every other op that is not a view by the number of elements it touches:
  ``max(total output elements, largest input)`` — one per element for
  elementwise maths, reductions (a sum reads every input element once),
  random draws and copies.

So the budget's currency is "matrix-product FLOPs + element operations"; the
record keeps both parts (``matmul_flops``, ``element_ops``). It sees
everything torch dispatches — forward, backward, optimizer updates, work under
``torch.no_grad`` — but not numpy or custom kernels outside torch: those show
up only in the wall time each stage records beside its FLOPs.

With ``limit`` set, the mode raises :class:`AllowanceExceeded` as soon as the
running total passes it: stage preparation (reflow pair generation, a
teacher's samples) is stopped at its allowance while it runs, not discovered
afterwards.
"""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from gmbench.backbones.flops import register_cpu_attention_flops

aten = torch.ops.aten
register_cpu_attention_flops()  # CPU attention, whichever modules a plugin imports

#: ops that move no data (metadata, allocation without filling)
_FREE = {
    aten.empty, aten.empty_like, aten.empty_strided, aten.lift_fresh, aten.set_, aten.resize_,
    aten._local_scalar_dense, aten.is_same_size, aten.sym_size, aten.sym_stride, aten.sym_numel,
}


# Reads of a few values of a large tensor. The element rule charges them the whole input,
# which is what the training meter keeps (its protocol); the sampling audit charges what
# they read.
_GATHERS = {aten.index, aten.index_select, aten.gather, aten.embedding, aten.take}


def _mats(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, rows, columns) of a (batch of) matrices."""
    m, n = (t.shape[-2], t.shape[-1]) if t.dim() >= 2 else (1, t.numel())
    return t.numel() // max(1, m * n), m, n


def _cubic(coef: float):
    """``coef * batch * n^3`` for square ``n x n`` matrices (``m n min(m, n)`` otherwise)."""
    def f(a, *args, **kwargs):
        b, m, n = _mats(a)
        return coef * b * m * n * min(m, n)
    return f


def _solve(a, rhs=None, *args, **kwargs):
    b, m, n = _mats(a)
    k = rhs.shape[-1] if isinstance(rhs, torch.Tensor) and rhs.dim() >= 2 else 1
    return b * (2 / 3 * n**3 + 2 * n * n * k)


def _svd(a, *args, **kwargs):
    b, m, n = _mats(a)
    k = min(m, n)
    return b * (4 * m * n * k + 8 * k**3)


def _cdist(x1, x2, *args, **kwargs):  # (B, P, M), (B, R, M): difference, square, sum
    p, r, d = x1.shape[-2], x2.shape[-2], x1.shape[-1]
    return 3 * (x1.numel() // max(1, p * d)) * p * r * d


def _cdist_backward(grad, x1, x2, *args, **kwargs):
    return 2 * _cdist(x1, x2)


def _pdist(x, *args, **kwargs):
    n, d = x.shape[-2], x.shape[-1]
    return 3 * n * (n - 1) / 2 * d


def _pdist_backward(grad, x, *args, **kwargs):
    return 2 * _pdist(x)


def _sort(x, *args, **kwargs):
    dim = next((a for a in args if isinstance(a, int) and not isinstance(a, bool)), kwargs.get("dim", -1))
    size = x.shape[dim] if x.dim() else 1
    return x.numel() * max(1.0, math.log2(max(size, 2)))


def _fft(x, dims=None, *args, **kwargs):
    dims = list(dims) if isinstance(dims, (list, tuple)) else [-1]
    size = math.prod(x.shape[d] for d in dims) if x.dim() else 1
    return 5 * x.numel() * max(1.0, math.log2(max(size, 2)))


def _rnn_layer(scale: float):
    """A fused recurrent layer (one direction): the input and hidden products per time step."""
    def f(x, w_ih, w_hh, *args, **kwargs):
        steps = x.numel() // max(1, x.shape[-1])  # time steps x batch
        return scale * 2.0 * steps * (w_ih.numel() + w_hh.numel())
    return f


def _rnn_layer_backward(x, w1, w2, *args, **kwargs):
    return _rnn_layer(2.0)(x, w1, w2)


def _attention_products(batch_heads_e: float, lq: int, lk: int) -> float:
    return 4.0 * batch_heads_e * lq * lk  # Q K^T and the weights times V


def _encoder_layer(src, embed_dim, num_heads, qkv_w, qkv_b, proj_w, proj_b, use_gelu, norm_first, eps,
                   nw1, nb1, nw2, nb2, ffn_w1, ffn_b1, ffn_w2, *args, **kwargs):
    """nn.TransformerEncoderLayer's inference fast path: four linear layers and attention."""
    length = src.shape[-2] if src.dim() >= 2 else 1
    tokens = src.numel() // max(1, embed_dim)
    linear = 2.0 * tokens * (qkv_w.numel() + proj_w.numel() + ffn_w1.numel() + ffn_w2.numel())
    return linear + _attention_products(tokens * embed_dim / max(1, length), length, length)


def _multi_head_attention(q, k, v, embed_dim, num_heads, qkv_w, qkv_b, proj_w, *args, **kwargs):
    """nn.MultiheadAttention's inference fast path: input and output projections, attention."""
    tq, tk = q.numel() // max(1, embed_dim), k.numel() // max(1, embed_dim)
    lq, lk = (q.shape[-2] if q.dim() >= 2 else 1), (k.shape[-2] if k.dim() >= 2 else 1)
    linear = 2.0 * embed_dim * embed_dim * (tq + 2 * tk) + 2.0 * tq * proj_w.numel()
    return linear + _attention_products(tq * embed_dim / max(1, lq), lq, lk)


#: ops that the element rule would charge far below their work: leading terms of their
#: operation counts (LAPACK's, for the factorisations); a batch of matrices pays per matrix
_FORMULAS = {
    aten.linalg_inv_ex: _cubic(2.0),
    aten.linalg_solve_ex: _solve,
    aten._linalg_solve_ex: _solve,
    aten.linalg_lu_factor_ex: _cubic(2 / 3),
    aten.linalg_lu: _cubic(2 / 3),
    aten.linalg_cholesky_ex: _cubic(1 / 3),
    aten._linalg_det: _cubic(2 / 3),
    aten._linalg_slogdet: _cubic(2 / 3),
    aten.linalg_qr: _cubic(2.0),
    aten.linalg_lstsq: _cubic(2.0),
    aten._linalg_svd: _svd,
    aten._linalg_eigh: _cubic(9.0),
    aten.linalg_eig: _cubic(25.0),
    aten.linalg_matrix_exp: _cubic(20.0),
    aten._cdist_forward: _cdist,
    aten._euclidean_dist: _cdist,  # cdist's matrix-product path (more than 25 rows)
    aten._cdist_backward: _cdist_backward,
    aten._pdist_forward: _pdist,
    aten._pdist_backward: _pdist_backward,
    aten.sort: _sort,
    aten._fft_r2c: _fft,
    aten._fft_c2r: _fft,
    aten._fft_c2c: _fft,
    # fused kernels of torch.nn layers that no gmbench network uses, so that a plugin's LSTM
    # or fast-path transformer is charged its matrix products (the element rule saw 1-6% of them)
    aten.mkldnn_rnn_layer: _rnn_layer(1.0),
    aten.mkldnn_rnn_layer_backward: _rnn_layer_backward,
    aten._transformer_encoder_layer_fwd: _encoder_layer,
    aten._native_multi_head_attention: _multi_head_attention,
}


class AllowanceExceeded(RuntimeError):
    """Work under an :class:`OpCostMode` with a ``limit`` went past it."""


def _stored(t: torch.Tensor) -> int:
    """Elements a tensor can really hold: an expanded (stride-0) view counts its storage once."""
    try:
        return min(t.numel(), t.untyped_storage().nbytes() // max(1, t.element_size()))
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, wrappers)
        return t.numel()


def _numel_of(obj, stored: bool = False) -> tuple[int, int]:
    """(total elements, largest single tensor) of the tensors in ``obj`` (one level of lists);
    ``stored``: count each tensor's storage instead of its (possibly expanded) shape."""
    size = _stored if stored else torch.Tensor.numel
    if isinstance(obj, torch.Tensor):
        n = size(obj)
        return n, n
    total = largest = 0
    if isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, torch.Tensor):
                n = size(item)
                total += n
                largest = max(largest, n)
    return total, largest


class OpCostMode(TorchDispatchMode):
    """Counts matrix-product FLOPs and element operations of everything run under it.

    Args:
        limit: raise :class:`AllowanceExceeded` once ``total`` exceeds it (None: no limit).
        what: how the limit's work is named in the error message.
        audit: the sampling audit's conventions instead of the training meter's: gathers
            (index, gather, take, embedding) are charged the values they return, an input its
            storage (so a huge expanded view of one number is not huge work), and the work
            autograd runs in a backward pass (a sampler's gradients) is summed in ``backward``.
    """

    def __init__(self, limit: float | None = None, what: str = "work", audit: bool = False):
        super().__init__()
        self.audit = audit
        self.backward = 0.0
        self.matmul_flops = 0.0
        self.element_ops = 0.0
        self.limit = limit
        self.what = what

    @property
    def total(self) -> float:
        return self.matmul_flops + self.element_ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.audit and torch._C._current_graph_task_id() != -1:  # inside autograd's backward
            before = self.total
            out = self._charge(func, args, kwargs)
            self.backward += self.total - before
            return out
        return self._charge(func, args, kwargs)

    def _charge(self, func, args, kwargs):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = flop_registry.get(packet)
        if formula is not None:
            self.matmul_flops += float(formula(*args, **kwargs, out_val=out))
        elif packet in _FORMULAS:  # counted with the matrix products: work with a formula
            self.matmul_flops += float(_FORMULAS[packet](*args, **kwargs))
        elif self.audit and packet in _GATHERS:
            self.element_ops += float(_numel_of(out)[0])
        elif not func.is_view and packet not in _FREE:
            out_total, _ = _numel_of(out)
            largest_in = 0
            for a in args:
                largest_in = max(largest_in, _numel_of(a, stored=self.audit)[1])
            self.element_ops += float(max(out_total, largest_in))
        if self.limit is not None and self.total > self.limit:
            raise AllowanceExceeded(f"{self.what} used more than its allowance of {self.limit:.3g} FLOPs; "
                                    "size it from Method.budget_view")
        return out


def count_cost(fn, *args, limit: float | None = None, what: str = "work", **kwargs):
    """Run ``fn`` under an :class:`OpCostMode`; return (result, mode)."""
    mode = OpCostMode(limit=limit, what=what)
    with mode:
        out = fn(*args, **kwargs)
    return out, mode
