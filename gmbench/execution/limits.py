"""Per-run limits applied inside a worker process: memory cap, determinism.

(Threads: :mod:`gmbench.execution.threads`.)

The memory cap is ``RLIMIT_AS`` set *relative* to the worker's address space
after start-up: importing torch alone maps ~3 GB of address space it never
touches, so an absolute cap would mean different things on different installs.
``--memory-cap-mb N`` therefore gives each run N MB of address space on top of
the imports. It cannot be used with CUDA (the driver reserves tens of GB of
address space at initialisation); GPU out-of-memory errors become failed
records anyway, as ``torch.OutOfMemoryError``.
"""

from __future__ import annotations

import os
import resource

#: the cap in force in this process (None: no cap), read by :func:`memory_error_message`
_CAP_MB: int | None = None

_OOM_MARKERS = ("can't allocate memory", "out of memory", "Cannot allocate memory", "bad_alloc")


def address_space_mb() -> float:
    """This process's virtual address space (VmSize), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) / 1024.0
    raise OSError("no VmSize in /proc/self/status")


def apply_memory_cap(cap_mb: int) -> None:
    """Cap this process's address space at its current size plus ``cap_mb``."""
    global _CAP_MB
    limit = int((address_space_mb() + cap_mb) * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    _CAP_MB = cap_mb


def memory_error_message(exc: BaseException) -> str | None:
    """'out of memory (cap N MB): ...' for an allocation failure, else None."""
    from gmbench.evaluate import one_line

    text = str(exc)
    is_oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and any(m in text for m in _OOM_MARKERS)
    )
    if not is_oom:
        return None
    cap = f"cap {_CAP_MB} MB" if _CAP_MB is not None else "no cap set"
    return f"out of memory ({cap}): {one_line(exc)}"


def make_deterministic() -> None:
    """Ask torch for bit-reproducible kernels (see docs/scaling.md).

    Must run before the first cuBLAS call of the process: the workspace
    setting is read when cuBLAS initialises.
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
