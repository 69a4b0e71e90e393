"""Make ``torch.utils.flop_counter.FlopCounterMode`` count attention on CPU.

PyTorch's flop counter has formulas for the CUDA attention kernels (flash, efficient,
cuDNN) but not for the CPU kernel that ``F.scaled_dot_product_attention`` dispatches to
(``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward), so on CPU every
attention matmul counts as 0 FLOPs and the budget meter would under-charge transformers.
(Checked on torch 2.14: a (2, 4, 16, 32) SDPA call reports 0 FLOPs on CPU.)

:func:`register_cpu_attention_flops` adds those formulas, reusing torch's own
``sdpa_flop_count`` / ``sdpa_backward_flop_count`` so CPU and GPU runs are charged the
same. It is idempotent and is called when the attention-using backbones are imported;
the budget module may call it too.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter as _fc

_TARGETS = (
    ("_scaled_dot_product_flash_attention_for_cpu", False),
    ("_scaled_dot_product_flash_attention_for_cpu_backward", True),
)


def register_cpu_attention_flops() -> None:
    """Register FLOP formulas for the CPU SDPA kernels unless torch already has them."""
    registry = getattr(_fc, "flop_registry", None)
    if registry is None or not hasattr(_fc, "sdpa_flop_count"):
        return  # an older/newer torch without this machinery: nothing to patch
    for name, backward in _TARGETS:
        op = getattr(torch.ops.aten, name, None)
        if op is None or op in registry:
            continue
        if backward:
            def formula(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
                return _fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
        else:
            def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
                return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)
        _fc.register_flop_formula(op)(formula)
