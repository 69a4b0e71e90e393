"""What a training step costs: every aten op counted, not only matrix products.

``torch.utils.flop_counter.FlopCounterMode`` counts matrix products (and
convolutions, attention) only: the same 128x128 products written as a
broadcast multiply and a sum were charged 262,144 FLOPs instead of ~1e8.
:class:`OpCostMode` is a lean ``TorchDispatchMode`` that charges

* every op with a formula in torch's ``flop_registry`` (matmul, conv,
  attention, plus gmbench's own in ``gmbench.backbones.flops``) by that formula;
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

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten

#: ops that move no data (metadata, allocation without filling)
_FREE = {
    aten.empty, aten.empty_like, aten.empty_strided, aten.lift_fresh, aten.set_, aten.resize_,
    aten._local_scalar_dense, aten.is_same_size, aten.sym_size, aten.sym_stride, aten.sym_numel,
}


class AllowanceExceeded(RuntimeError):
    """Work under an :class:`OpCostMode` with a ``limit`` went past it."""


def _numel_of(obj) -> tuple[int, int]:
    """(total elements, largest single tensor) of the tensors in ``obj`` (one level of lists)."""
    if isinstance(obj, torch.Tensor):
        n = obj.numel()
        return n, n
    total = largest = 0
    if isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, torch.Tensor):
                n = item.numel()
                total += n
                largest = max(largest, n)
    return total, largest


class OpCostMode(TorchDispatchMode):
    """Counts matrix-product FLOPs and element operations of everything run under it.

    Args:
        limit: raise :class:`AllowanceExceeded` once ``total`` exceeds it (None: no limit).
        what: how the limit's work is named in the error message.
    """

    def __init__(self, limit: float | None = None, what: str = "work"):
        super().__init__()
        self.matmul_flops = 0.0
        self.element_ops = 0.0
        self.limit = limit
        self.what = what

    @property
    def total(self) -> float:
        return self.matmul_flops + self.element_ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = flop_registry.get(packet)
        if formula is not None:
            self.matmul_flops += float(formula(*args, **kwargs, out_val=out))
        elif not func.is_view and packet not in _FREE:
            out_total, _ = _numel_of(out)
            largest_in = 0
            for a in args:
                largest_in = max(largest_in, _numel_of(a)[1])
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
