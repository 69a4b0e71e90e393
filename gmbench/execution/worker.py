"""One run in its own process: the unit both ``--jobs N`` and Ray execute.

The parent starts a child (forkserver, so torch is imported once, not per
run), waits for its record over a pipe, and kills it once it has run longer
than its training cap + evaluation cap + grace (or ``hang_timeout_s``) — a hang inside a single step
cannot be interrupted any other way. The child writes its own record; when
it cannot (killed, crashed, out of memory beyond recovery), the parent writes
the failed record. The child ignores SIGINT: Ctrl-C reaches the parent, which
kills its children and writes nothing, so ``--resume`` redoes those runs.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

from gmbench.execution.base import RunOptions, write_failed
from gmbench.records import RunSpec

#: start-up of a worker (the forkserver's first start imports torch) is not run time
STARTUP_TIMEOUT_S = 300.0
_STARTED = "started"

#: the supervisor's clock (a module attribute, so tests can drive the hang kill with a fake one)
_now = time.monotonic

#: environment a child must see as its parent does *now*: Ray sets the GPUs per task, in
#: the worker process that calls run_isolated, while the forkserver keeps its start-up values
_PASSED_ENV = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


_WARM = False


def warm_up() -> None:
    """Import what a run needs, including ``FlopCounterMode``'s lazy imports (~3 s once)."""
    global _WARM
    if _WARM:
        return
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import gmbench.runner  # noqa: F401

    with FlopCounterMode(display=False):
        torch.ones(2, 2) @ torch.ones(2, 2)
    _WARM = True


def _context():
    if sys.platform == "linux":
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["gmbench.execution._preload"])
        return ctx
    return multiprocessing.get_context("spawn")


def _child_main(spec: RunSpec, options: RunOptions, out_dir: str, env: dict, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(_STARTED)
    os.environ.update(options.env)
    for key in _PASSED_ENV:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
    from gmbench.execution.limits import apply_memory_cap, make_deterministic
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.runner import failure_message, run_one

    try:
        options.apply_threads()
        if options.deterministic:
            make_deterministic()
        reg = Registries(make_plugin_manager(tuple(options.extra_plugins), load_entrypoints=options.load_entrypoints))
        if options.memory_cap_mb:
            apply_memory_cap(options.memory_cap_mb)
        record = run_one(spec, reg, out_dir, options.cache_dir, options.checkpoint_dir)
    except BaseException as exc:  # noqa: BLE001 - even a broken setup is a record
        record = write_failed(None, out_dir, spec, failure_message(exc))
    conn.send(record)
    conn.close()


def _death_message(exitcode: int | None, options: RunOptions) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    hint = f"; out of memory? (cap {options.memory_cap_mb} MB)" if options.memory_cap_mb else ""
    return f"WorkerDied: the worker process {how} before writing a record{hint}"


def run_isolated(
    spec: RunSpec,
    options: RunOptions,
    out_dir: str | Path,
    timeout_s: float,
    cancel: threading.Event | None = None,
) -> dict | None:
    """Run ``spec`` in a child process; return its record (None if ``cancel`` was set)."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    proc = ctx.Process(target=_child_main, args=(spec, options, str(out_dir), env, send), daemon=True,
                       name=f"gmbench-{spec.method}-{spec.spec_hash}")
    proc.start()
    send.close()
    started, running = _now(), False
    record = None
    try:
        while True:
            if recv.poll(0.2):
                try:
                    message = recv.recv()
                except EOFError:  # the child died without sending its record
                    break
                if message == _STARTED:
                    started, running = _now(), True
                    continue
                record = message
                break
            if cancel is not None and cancel.is_set():
                proc.kill()
                proc.join()
                return None
            elapsed = _now() - started
            if elapsed > (timeout_s if running else STARTUP_TIMEOUT_S):
                proc.kill()
                proc.join()
                what = f"no result after {elapsed:.0f}s ({options.hang_rule()})" if running \
                    else f"the worker did not start within {elapsed:.0f}s"
                return write_failed(None, out_dir, spec, f"RunHung: {what}; worker killed")
    finally:
        recv.close()
    proc.join(timeout=30)
    if proc.is_alive():  # sent its record but will not exit (a stuck thread): it is done
        proc.kill()
        proc.join()
    if record is None:
        return write_failed(None, out_dir, spec, _death_message(proc.exitcode, options))
    return record
