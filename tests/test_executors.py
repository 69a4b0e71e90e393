"""Executors: in-process, worker processes and Ray write the same records with the same
numbers; Ray contains every fault too; bf16 autocast; clear one-line errors.

One local Ray (2 CPUs) serves the whole module; the Ray tests skip with the reason
when Ray is not installed (it is in the ``ray`` and ``test`` extras). Hang deadlines
as in test_faults.py: generous where runs must finish, short only where every run hangs.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gmbench.execution import ExecutionError, make_executor
from gmbench.plugins import Registries, make_plugin_manager
from gmbench.records import RunSpec, load_records
from gmbench.runner import expand, run_all, run_one
from tests.plugins.fake_methods import GaussianFit
from tests.plugins.faulty_methods import FAULTS, FaultsPlugin
from tests.test_faults import HANGS, NEVER_FINISH_S, assert_isolated, options, registries

REPO = Path(__file__).resolve().parents[1]
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install 'gmbench[ray]'")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is checked by benchmarks/bench_executors.py --device cuda")

HEALTHY = RunSpec("healthy", "8gaussians", "faults", 0)

# under pytest-xdist (`--dist loadgroup`) one worker runs every test that starts a local Ray
# cluster: two clusters started at once on one machine could find and join each other
pytestmark = pytest.mark.xdist_group("ray")


def metric_values(record: dict) -> list[tuple]:
    return sorted((e["name"], str(e["sampler"]), str(e["nfe"]), e["value"]) for e in record["metrics"])


@pytest.fixture(scope="module")
def in_process_record(tmp_path_factory):
    [record] = make_executor("local", options=options()).run([HEALTHY], registries(), tmp_path_factory.mktemp("inproc"))
    return record


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def run_under_ray(methods, out_dir, **kw) -> dict[str, dict]:
    reg = registries()
    m = expand(reg, plugins=",".join(methods), datasets="8gaussians", budget="faults")
    with make_executor("ray", options=options(**kw)) as ex:
        records = run_all(m, reg, out_dir, executor=ex)
    return {r["method"]: r for r in records}


@pytest.fixture(scope="module")
def ray_basic(local_ray, tmp_path_factory):
    """A healthy run beside the faults only a separate process can contain.

    The healthy run takes the thread policy's default (``--cpus-per-run`` 1: one
    thread, as the in-process run it is compared with); the hang runs apart, with a
    short deadline (see test_faults.py).
    """
    out = tmp_path_factory.mktemp("ray")
    return {**run_under_ray(("healthy", "sigkilled"), out, threads=None),
            **run_under_ray(("hangs",), out, hang_timeout_s=NEVER_FINISH_S)}


# -- determinism -------------------------------------------------------------------


def test_worker_process_gives_the_in_process_numbers(in_process_record, tmp_path):
    assert in_process_record["status"] == "ok", in_process_record["error"]
    # --deterministic changes kernels on a GPU; on the CPU it must change nothing
    [worker] = make_executor("local", jobs=1, options=options(deterministic=True)).run([HEALTHY], registries(), tmp_path)
    assert worker["status"] == "ok", worker["error"]
    assert metric_values(worker) == metric_values(in_process_record)
    assert worker["fingerprint"] == in_process_record["fingerprint"]


@needs_ray
def test_ray_gives_the_in_process_numbers(ray_basic, in_process_record):
    assert ray_basic["healthy"]["status"] == "ok", ray_basic["healthy"]["error"]
    assert metric_values(ray_basic["healthy"]) == metric_values(in_process_record)
    # the task sized its threads from --cpus-per-run (1), not from the node's cores
    assert ray_basic["healthy"]["provenance"]["cpu_threads"] == 1


# -- Ray ------------------------------------------------------------------------------


@needs_ray
def test_ray_kills_a_hung_run_and_survives_a_killed_worker(ray_basic):
    assert FAULTS["hangs"] in ray_basic["hangs"]["error"] and "worker killed" in ray_basic["hangs"]["error"]
    assert FAULTS["sigkilled"] in ray_basic["sigkilled"]["error"]


@needs_ray
@pytest.mark.slow
def test_ray_contains_every_fault(local_ray, tmp_path):
    records = {**run_under_ray(("healthy", *(f for f in FAULTS if f not in HANGS)), tmp_path, memory_cap_mb=300),
               **run_under_ray(HANGS, tmp_path, memory_cap_mb=300, hang_timeout_s=NEVER_FINISH_S)}
    assert_isolated(records, list(FAULTS), tmp_path)
    assert "(cap 300 MB)" in records["memory-hog"]["error"]


@needs_ray
def test_ray_resume_skips_ok_and_reruns_failed(local_ray, tmp_path):
    reg = registries()
    m = expand(reg, plugins="healthy,raises", datasets="8gaussians", budget="faults")
    ex = make_executor("ray", options=options())
    first = run_all(m, reg, tmp_path, executor=ex)
    assert sorted(r["status"] for r in first) == ["failed", "ok"]
    seen = []
    run_all(m, reg, tmp_path, resume=True, executor=ex, on_record=lambda s, r, i, n: seen.append((s.method, r and r["status"])))
    assert sorted(seen) == [("healthy", None), ("raises", "failed")]


@needs_ray
def test_unreachable_ray_address_is_one_line_and_fast(monkeypatch, tmp_path):
    import ray

    def no_init(*args, **kwargs):  # ray.init would retry the address for minutes
        raise AssertionError("ray.init was reached: the address was not probed first")

    monkeypatch.setattr(ray, "init", no_init)
    ex = make_executor("ray", ray_address="127.0.0.1:9", options=options())
    with pytest.raises(ExecutionError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:9: .*ray start --head") as info:
        ex.run([HEALTHY], registries(), tmp_path)
    assert "\n" not in str(info.value)


def test_missing_ray_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ExecutionError, match=r"pip install 'gmbench\[ray\]'"):
        make_executor("ray").run([HEALTHY], registries(), tmp_path)


def test_executor_options_are_checked():
    with pytest.raises(ExecutionError, match="--jobs must be at least 1"):
        make_executor("local", jobs=0)
    with pytest.raises(ExecutionError, match="--jobs is for --executor local"):
        make_executor("ray", jobs=2)
    with pytest.raises(ExecutionError, match="unknown executor 'dask'"):
        make_executor("dask")


def test_cli_builds_the_executor_from_its_options(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import gmbench.execution as execution
    from gmbench.cli import main
    from gmbench.execution.inprocess import InProcessExecutor

    calls = []

    def spy(name, **kw):
        calls.append((name, kw))
        if name == "ray":
            raise ExecutionError("stopped by the test")
        return InProcessExecutor(replace(kw["options"], extra_plugins=(FaultsPlugin(),), load_entrypoints=False))

    monkeypatch.setattr("gmbench.plugins.Registries", registries)
    monkeypatch.setattr(execution, "make_executor", spy)
    base = ["run", "--plugins", "healthy", "--datasets", "8gaussians", "--budget", "faults", "--out", str(tmp_path)]
    res = CliRunner().invoke(main, [*base, "--jobs", "2", "--grace", "5", "--precision", "bf16", "--deterministic", "--threads", "1"])
    assert res.exit_code == 0, res.output
    name, kw = calls[-1]
    assert (name, kw["jobs"], kw["options"].grace_s, kw["options"].deterministic, kw["options"].threads) == ("local", 2, 5.0, True, 1)
    [rec], _ = load_records([tmp_path])
    assert rec["precision"] == "bf16"

    res = CliRunner().invoke(main, [*base, "--executor", "ray", "--device", "cuda", "--ray-address", "auto"])
    assert res.exit_code == 1 and "stopped by the test" in res.output
    name, kw = calls[-1]
    assert (name, kw["gpus_per_run"], kw["ray_address"]) == ("ray", 1, "auto")
    for bad, message in ((["--executor", "ray", "--device", "cuda:1"], "Ray assigns each run its GPU"),
                         (["--device", "cuda", "--memory-cap-mb", "500"], "cannot cap host address space with CUDA")):
        res = CliRunner().invoke(main, [*base, *bad])
        assert res.exit_code == 1 and message in res.output and res.output.strip().count("\n") == 0


# -- precision ---------------------------------------------------------------------------


class DtypeProbe(GaussianFit):
    """Records the dtype a linear layer computes in, in training and in sampling.

    The probe is ``F.linear`` on the layer's weight, not a call of the module: the
    host counts forward calls of the method's networks per sample (NFE), and the
    probe must not add any.
    """

    name = "dtype-probe"
    seen: list = []

    def _probe(self, x):
        return torch.nn.functional.linear(x, self.proj.weight)

    def training_step(self, stage, batch, step):
        DtypeProbe.seen.append(("train", self._probe(batch).dtype))
        return super().training_step(stage, batch, step)

    def sample(self, n, sampler, nfe, generator):
        x = super().sample(n, sampler, nfe, generator)
        DtypeProbe.seen.append(("sample", self._probe(x).dtype))
        return self._probe(x)


class ProbePlugin:
    from gmbench import hookimpl

    @hookimpl
    def gmbench_register_methods(self, register):
        register(DtypeProbe)


def test_bf16_autocasts_training_and_sampling_and_changes_the_fingerprint(tmp_path):
    reg = Registries(make_plugin_manager((FaultsPlugin(), ProbePlugin()), load_entrypoints=False))
    fp32_spec = RunSpec("dtype-probe", "8gaussians", "faults", 0)
    bf16_spec = RunSpec("dtype-probe", "8gaussians", "faults", 0, precision="bf16")
    DtypeProbe.seen = []
    fp32 = run_one(fp32_spec, reg, tmp_path)
    assert {dt for _, dt in DtypeProbe.seen} == {torch.float32}
    DtypeProbe.seen = []
    bf16 = run_one(bf16_spec, reg, tmp_path)
    assert bf16["status"] == "ok", bf16["error"]
    assert set(DtypeProbe.seen) == {("train", torch.bfloat16), ("sample", torch.bfloat16)}
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert bf16["fingerprint"] != fp32["fingerprint"] and bf16["fingerprint_fields"]["precision"] == "bf16"
    assert bf16_spec.filename != fp32_spec.filename  # both records live side by side
    assert all(c["sampling_precision"] == "bf16 autocast" for c in bf16["cost"]["sampling"])


# -- GPU (skipped on CPU-only machines) ---------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_run_in_a_worker(tmp_path, precision):
    spec = RunSpec("healthy", "8gaussians", "faults", 0, device="cuda", precision=precision)
    [rec] = make_executor("local", jobs=1, options=options()).run([spec], registries(), tmp_path)
    assert rec["status"] == "ok", rec["error"]
    assert rec["provenance"]["device"].startswith("cuda")
