"""Numeric precision of a run: fp32 (default) or bf16 autocast.

``bf16`` wraps training forward passes and sampling in ``torch.autocast``
(weights, optimizer state and metrics stay fp32; bf16 needs no loss scaling).
It works on CPU too (slower than fp32 there: it is meant for GPUs with bf16
tensor cores). The precision is part of the spec hash and the fingerprint:
bf16 and fp32 numbers are not mixed on a leaderboard unless asked.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device | str, precision: str):
    """Context manager for ``precision`` on ``device`` (a no-op for fp32)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def autocast_sampling(method, precision: str) -> None:
    """Make ``method.sample`` run under ``precision`` autocast, returning fp32 samples.

    Installed on the instance (the host builds one method per run), so the
    evaluation code needs no precision argument and metrics stay fp32. The
    method's ``sampling_precision`` (reported per sampler in the record) says so.
    """
    if check_precision(precision) == "fp32":
        return
    plain = method.sample

    def sample(n, sampler, nfe, generator):
        with autocast(method.device, precision):
            out = plain(n, sampler, nfe, generator)
        return out.float() if isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 else out

    method.sample = sample
    if getattr(method, "sampling_precision", None) in (None, "float32"):
        method.sampling_precision = f"{precision} autocast"
