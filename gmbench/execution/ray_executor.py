"""``--executor ray``: one Ray task per run, with the run's CPUs and GPUs.

Ray does placement, queueing and retries (a task whose node dies is retried
``max_retries`` times elsewhere). Inside the task the run executes in a child
process (:func:`~gmbench.execution.worker.run_isolated`), which gives the same
hang kill and memory cap as ``--jobs N``; Ray has no per-task timeout of its
own, and a hung task would otherwise hold its GPU forever. The child also
keeps CUDA out of Ray's long-lived worker processes, so GPU memory is freed
after every run.

Records are written by the worker into ``--out``; on a cluster that path
should be on a shared filesystem. The task also returns the record, and the
driver writes it where the worker's copy is not visible, so nothing is lost
without one (checkpoints from ``--save-checkpoints`` do need shared storage).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gmbench.evaluate import one_line
from gmbench.execution.base import ExecutionError, Executor, Report, RunOptions, write_failed
from gmbench.execution.worker import run_isolated
from gmbench.records import RecordError, RunSpec, load_record, write_record


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutionError("--executor ray needs Ray: pip install 'gmbench[ray]' (or 'ray[default]')") from None
    return ray


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        options: RunOptions | None = None,
        address: str | None = None,
        cpus_per_run: float = 1,
        gpus_per_run: float = 0,
        max_retries: int = 2,
        init_kwargs: dict | None = None,
    ):
        super().__init__(options)
        self.address = address
        self.cpus_per_run, self.gpus_per_run = cpus_per_run, gpus_per_run
        self.max_retries = max_retries
        self.init_kwargs = init_kwargs or {}
        self._started_ray = False

    def connect(self):
        """Join ``address`` (or a running Ray), else start a local Ray; one-line error if unreachable."""
        ray = import_ray()
        if self.address:
            _probe(self.address)
        if ray.is_initialized():
            return ray
        kwargs = {"include_dashboard": False, "log_to_driver": True, **self.init_kwargs}
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(**kwargs)
                self._started_ray = True
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            hint = " (is `ray start --head` running there? leave out --ray-address to start a local Ray)" if self.address else ""
            raise ExecutionError(f"cannot start or reach {where}: {one_line(exc)}{hint}") from None
        return ray

    def run(self, specs: list[RunSpec], reg, out_dir: str | Path, report: Report | None = None) -> list[dict]:
        ray = self.connect()
        # the task sizes its threads on its node: --cpus-per-run, capped by what the node lets it use (see .threads)
        options = replace(self.options, cpus_per_run=self.cpus_per_run)
        # a task may run on another node, in another working directory
        absolute = {k: str(Path(v).resolve()) for k in ("cache_dir", "checkpoint_dir") if (v := getattr(options, k))}
        options = replace(options, **absolute)
        # run_isolated's module does not import torch: the Ray worker stays light, only its child loads torch
        task = ray.remote(run_isolated).options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=self.max_retries, retry_exceptions=False,
            name="gmbench-run",
        )
        out = str(Path(out_dir).resolve())
        pending = {task.remote(s, options, out, options.hard_timeout_s(reg.budgets.get(s.budget))): s for s in specs}
        records = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    spec = pending.pop(ref)
                    try:
                        rec = ray.get(ref)
                        _ensure_written(out, spec, rec)
                    except ray.exceptions.RayError as exc:  # task lost after its retries: worker or node died
                        rec = write_failed(reg, out, spec, f"RayTaskFailed: {_ray_error_line(exc)}")
                    records.append(rec)
                    if report:
                        report(spec, rec)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return records

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``host:port``.

    (``ray.init`` retries an unreachable address for minutes, printing warnings.)
    """
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutionError(f"--ray-address {address!r}: use host:port (the head node's GCS port, 6379 by default) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ExecutionError(
            f"cannot reach the Ray cluster at {address}: {reason} (is `ray start --head` running there? "
            "leave out --ray-address to start a local Ray)"
        ) from None


def _ensure_written(out_dir: str, spec: RunSpec, record: dict) -> None:
    """Write the task's record here unless the worker's copy is already visible.

    A ``skipped`` record (the spec was running or done in another process, which
    writes its own record) is never written, as no executor writes one.
    """
    if record.get("status") == "skipped":
        return
    path = Path(out_dir) / spec.filename
    try:
        if path.exists() and load_record(path) == _json_roundtrip(record):
            return
    except RecordError:
        pass
    write_record(out_dir, spec, record)


def _json_roundtrip(record: dict) -> dict:
    import json

    from gmbench.records import _json_default

    return json.loads(json.dumps(record, default=_json_default))


def _ray_error_line(exc: BaseException) -> str:
    import re

    cause = getattr(exc, "cause", None)  # RayTaskError carries the task's own exception
    if isinstance(cause, BaseException):
        return f"{type(exc).__name__}: {one_line(cause)}"
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
