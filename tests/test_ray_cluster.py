"""The suite on an existing multi-node Ray cluster (docs/scaling.md, "An existing Ray cluster").

A real local cluster, started here with ``ray.cluster_utils.Cluster``: a head with no
CPUs (so no run executes there) and two worker nodes of 1 CPU each. Every node is its own
raylet process tree (the ``Node`` class that ``ray start`` uses), joined through the
head's GCS address exactly as ``ray start --address`` joins. The sweeps are driven by
``gmbench run --executor ray --ray-address HOST:PORT`` in a separate process, as a user
would; the runs' plugin is *installed* for every node (an entry point on the nodes'
``PYTHONPATH``), not shipped from the driver.

* the records' metrics equal an in-process run's, value for value;
* a worker node lost mid-run (its whole process tree killed, as when a machine dies):
  Ray retries the run on the surviving node and the sweep ends ok; with Ray's retries
  exhausted (``max_retries=0``) the run is a failed record, not a crash, and
  ``gmbench run --resume`` on the surviving cluster finishes the sweep;
* only a node's Ray processes lost (a raylet crash) while its run lives on: Ray's retry
  finds the spec running and skips it, and the record is the one that run writes.

No verdict depends on speed: the lost-node runs block until the test creates a "go"
file, after it has seen them start and has killed a node, so the kill always lands
mid-run. Timeouts are only safety nets against hangs.

Isolation from other Ray users of this machine: the cluster lives under a private
``RAY_TMPDIR`` (Ray writes "the current cluster" there, where a plain ``ray.init()``
elsewhere would otherwise find and join it), and teardown kills only this cluster's
processes (never a global ``ray stop``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gmbench import hookimpl
from gmbench.records import load_records
from tests.plugins.faulty_methods import FAULT_BUDGET, Healthy

REPO = Path(__file__).resolve().parents[1]
HAVE_RAY = importlib.util.find_spec("ray") is not None
# xdist_group: one pytest-xdist worker runs every test that starts a local Ray cluster (see test_executors.py)
pytestmark = [pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install 'gmbench[ray]'"), pytest.mark.slow,
              pytest.mark.xdist_group("ray")]

#: where WaitsForGo writes "started-<node>-<pid>" and waits for "go" (set on the nodes only)
MARKERS_ENV = "GMBENCH_TEST_MARKERS"
#: the label of the node a run executes on (each node's processes inherit their own)
NODE_ENV = "GMBENCH_TEST_NODE"
#: safety nets against a hang, never the thing tested: far above any plausible slowness
SAFETY_S = 900.0

#: the faults budget's tiny runs, with clock caps no blocked run comes near (x50 in tests)
CLUSTER_BUDGET = replace(FAULT_BUDGET, name="cluster-test", wall_clock_s=600.0, eval_timeout_s=600.0,
                         description="multi-node Ray tests: tiny runs, caps far away")


class WaitsForGo(Healthy):
    """``healthy``, except that on a node it reports its start and blocks until "go" exists.

    Blocking changes no number: its records equal the in-process run of the same spec
    (where ``GMBENCH_TEST_MARKERS`` is unset and it never blocks).
    """

    name = "waits-for-go"

    def training_step(self, stage, batch, step):
        markers = os.environ.get(MARKERS_ENV)
        if step == 1 and markers:
            markers = Path(markers)
            (markers / f"started-{os.environ.get(NODE_ENV, '?')}-{os.getpid()}").touch()
            deadline = time.monotonic() + SAFETY_S
            while not (markers / "go").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("no 'go' marker: the test did not release the run")
                time.sleep(0.05)
        return super().training_step(stage, batch, step)


class ClusterPlugin:
    @hookimpl
    def gmbench_register_methods(self, register):
        register(Healthy)
        register(WaitsForGo)

    @hookimpl
    def gmbench_register_budgets(self, register):
        register(CLUSTER_BUDGET)


#: the entry point every node loads (``gmbench = tests.test_ray_cluster:PLUGIN``)
PLUGIN = ClusterPlugin()


def metric_values(record: dict) -> list[tuple]:
    """As in test_executors.py: every metric value, exactly."""
    return sorted((e["name"], str(e["sampler"]), str(e["nfe"]), e["value"]) for e in record["metrics"])


def by_spec(records) -> dict[tuple, dict]:
    return {(r["method"], r["seed"]): r for r in records}


# -- the cluster ------------------------------------------------------------------------


class LocalCluster:
    """A head (0 CPUs) and worker nodes (1 CPU each) as separate raylet process trees."""

    def __init__(self, root: Path):
        self.root = root
        self.markers = root / "markers"
        self.markers.mkdir()
        self.site = root / "site"
        _install_entry_point(self.site)
        # short: Ray's unix socket paths live under it (107-byte limit)
        self.env = {
            "RAY_TMPDIR": str(root / "t"),
            "PYTHONPATH": os.pathsep.join([str(self.site), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "OMP_NUM_THREADS": "1",
            MARKERS_ENV: str(self.markers),
        }
        (root / "t").mkdir()
        self.nodes: dict[str, object] = {}
        self.drivers: list[subprocess.Popen] = []
        self._count = 0
        from ray.cluster_utils import Cluster

        with self._node_env("head"):
            self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        self.address = self.cluster.address

    @contextlib.contextmanager
    def _node_env(self, label: str):
        """The environment a node's processes (and the runs they start) inherit."""
        with pytest.MonkeyPatch.context() as mp:
            for key, value in {**self.env, NODE_ENV: label}.items():
                mp.setenv(key, value)
            for key in ("RAY_ADDRESS", "GMBENCH_DISABLE_EXTERNAL_PLUGINS"):
                mp.delenv(key, raising=False)
            yield

    def add_worker(self) -> str:
        self._count += 1
        label = f"w{self._count}"
        with self._node_env(label):
            self.nodes[label] = self.cluster.add_node(num_cpus=1)
        return label

    def ensure_workers(self, n: int) -> None:
        while len(self.nodes) < n:
            self.add_worker()
        self.cluster.wait_for_nodes(timeout=SAFETY_S)

    def kill(self, label: str, machine: bool = True) -> None:
        """Lose a node as when its machine dies: SIGKILL its raylet and every process under it.

        ``machine=False``: only Ray's processes die (``remove_node``: the raylet and its
        agents, as in a raylet crash); the run's own process, below a Ray worker and a
        forkserver, outlives them as an orphan.
        """
        import psutil
        import ray._private.ray_constants as rc

        node = self.nodes.pop(label)
        raylet = psutil.Process(node.all_processes[rc.PROCESS_TYPE_RAYLET][0].process.pid)
        tree = [raylet, *raylet.children(recursive=True)] if machine else []
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(tree, timeout=SAFETY_S)
        self.cluster.remove_node(node, allow_graceful=False)

    def reset_markers(self) -> None:
        shutil.rmtree(self.markers)
        self.markers.mkdir()

    def started(self) -> list[tuple[str, int]]:
        """(node label, pid) of every run that reported its start."""
        out = []
        for f in self.markers.glob("started-*"):
            _, label, pid = f.name.split("-")
            out.append((label, int(pid)))
        return sorted(out)

    def wait_started(self, n: int, driver: subprocess.Popen) -> list[tuple[str, int]]:
        deadline = time.monotonic() + SAFETY_S
        while len(self.started()) < n:
            if driver.poll() is not None:
                raise AssertionError(f"the sweep ended before {n} runs started:\n{_output(driver)}")
            assert time.monotonic() < deadline, f"safety net: {n} runs did not start in {SAFETY_S:.0f}s"
            time.sleep(0.1)
        return self.started()

    def go(self) -> None:
        (self.markers / "go").touch()

    def driver_env(self) -> dict:
        env = {**os.environ, **self.env}
        for key in ("RAY_ADDRESS", "GMBENCH_DISABLE_EXTERNAL_PLUGINS", MARKERS_ENV, NODE_ENV):
            env.pop(key, None)  # the driver runs nothing itself
        return env

    def shutdown(self) -> None:
        for proc in self.drivers:  # a driver left running by a failed test
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for label in list(self.nodes):
            with contextlib.suppress(Exception):
                self.kill(label)
        with contextlib.suppress(Exception):
            self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)


def _install_entry_point(site: Path) -> None:
    """Make PLUGIN an installed gmbench plugin for every process with ``site`` on its path."""
    dist = site / "gmbench_cluster_test-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gmbench-cluster-test\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[gmbench]\ncluster-test = tests.test_ray_cluster:PLUGIN\n")


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="gmrc-"))  # short: see LocalCluster
    c = None
    try:
        c = LocalCluster(root)
        c.ensure_workers(2)
        yield c
    finally:
        if c is not None:
            c.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def gmbench_run(cluster: LocalCluster, *args, wait: bool = True) -> subprocess.Popen:
    """``gmbench run --executor ray --ray-address HOST:PORT ...`` in its own process, as a user runs it."""
    return start_driver(cluster, ["-c", "from gmbench.cli import main; main()", "run", "--executor", "ray",
                                  "--ray-address", cluster.address, "--datasets", "8gaussians", "--budget", "cluster-test",
                                  "-q", *args], wait=wait)


def start_driver(cluster: LocalCluster, args: list[str], wait: bool = True) -> subprocess.Popen:
    # output to a file, not a pipe: Ray forwards the nodes' logs to the driver, enough to
    # fill a pipe nobody reads until the end and block the driver
    log = cluster.root / f"driver-{next(_DRIVERS)}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *args], env=cluster.driver_env(), stdout=f, stderr=subprocess.STDOUT)
    proc.log = log
    cluster.drivers.append(proc)
    if wait:
        proc.wait(timeout=SAFETY_S)
    return proc


_DRIVERS = itertools.count()


def _output(proc: subprocess.Popen) -> str:
    """The driver's output, its end (Ray's forwarded logs can be long)."""
    return proc.log.read_text(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The in-process records of every spec these tests run (one thread, as a Ray task has)."""
    from gmbench.execution import RunOptions, make_executor
    from gmbench.plugins import Registries, make_plugin_manager
    from gmbench.runner import expand, run_all

    reg = Registries(make_plugin_manager((PLUGIN,), load_entrypoints=False))
    m = expand(reg, plugins="healthy,waits-for-go", datasets="8gaussians", budget="cluster-test", seeds=(0, 1, 2, 3))
    ex = make_executor("local", options=RunOptions(threads=1, extra_plugins=(PLUGIN,), load_entrypoints=False))
    with ex:
        records = run_all(m, reg, tmp_path_factory.mktemp("inproc"), executor=ex)
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    return by_spec(records)


def assert_same_numbers(records, in_process) -> None:
    for key, rec in by_spec(records).items():
        assert rec["status"] == "ok", (key, rec["error"])
        assert metric_values(rec) == metric_values(in_process[key]), key
        assert rec["fingerprint"] == in_process[key]["fingerprint"], key


# -- the tests ------------------------------------------------------------------------------


def test_cluster_sweep_gives_the_in_process_numbers(cluster, in_process, tmp_path):
    cluster.ensure_workers(2)
    run = gmbench_run(cluster, "--plugins", "healthy", "--seeds", "4x", "--out", str(tmp_path))
    assert run.returncode == 0, _output(run)
    records, problems = load_records([tmp_path])
    assert problems == [] and len(records) == 4
    assert_same_numbers(records, in_process)
    # the runs executed on the worker nodes, one thread each (--cpus-per-run 1)
    assert {r["provenance"]["cpu_threads"] for r in records} == {1}


def lose_a_node_mid_run(cluster: LocalCluster, driver: subprocess.Popen) -> tuple[str, str]:
    """Both runs in flight, one per worker node: kill one node, then let the runs go on.

    Returns (lost node, surviving node).
    """
    started = cluster.wait_started(2, driver)
    assert len({label for label, _ in started}) == 2, f"expected one run per node: {started}"
    lost, survivor = started[0][0], started[1][0]
    cluster.kill(lost)
    cluster.go()
    return lost, survivor


def test_lost_node_is_retried_on_the_survivor(cluster, in_process, tmp_path):
    """The CLI's default: Ray retries a task whose node died; the sweep ends ok."""
    cluster.ensure_workers(2)
    cluster.reset_markers()
    driver = gmbench_run(cluster, "--plugins", "waits-for-go", "--seeds", "2x", "--out", str(tmp_path), wait=False)
    _, survivor = lose_a_node_mid_run(cluster, driver)
    driver.wait(timeout=SAFETY_S)
    assert driver.returncode == 0, _output(driver)
    records, problems = load_records([tmp_path])
    assert problems == [] and len(records) == 2
    assert_same_numbers(records, in_process)
    # three starts: both runs, then the lost one again on the surviving node
    assert [label for label, _ in cluster.started()].count(survivor) == 2


def test_lost_node_beyond_retries_is_a_failed_record_and_resume_finishes(cluster, in_process, tmp_path):
    """Retries exhausted (``max_retries=0``): a failed record; ``--resume`` on the survivor finishes."""
    cluster.ensure_workers(2)
    cluster.reset_markers()
    script = (
        "import sys\n"
        "from gmbench.execution.ray_executor import RayExecutor\n"
        "from gmbench.plugins import Registries\n"
        "from gmbench.runner import expand, run_all\n"
        "reg = Registries()\n"
        "m = expand(reg, plugins='waits-for-go', datasets='8gaussians', budget='cluster-test', seeds=(0, 1))\n"
        "ex = RayExecutor(address=sys.argv[1], max_retries=0)\n"
        "records = run_all(m, reg, sys.argv[2], executor=ex)\n"
        "print(sorted(r['status'] for r in records))\n"
    )
    driver = start_driver(cluster, ["-c", script, cluster.address, str(tmp_path)], wait=False)
    lose_a_node_mid_run(cluster, driver)
    driver.wait(timeout=SAFETY_S)
    output = _output(driver)
    assert driver.returncode == 0, output  # the lost run is a record, not a crash of the sweep
    first, problems = load_records([tmp_path])
    assert problems == [] and sorted(r["status"] for r in first) == ["failed", "ok"], output
    [failed] = [r for r in first if r["status"] == "failed"]
    assert failed["error"].startswith("RayTaskFailed: ") and "\n" not in failed["error"], failed["error"]

    resumed = gmbench_run(cluster, "--plugins", "waits-for-go", "--seeds", "2x", "--out", str(tmp_path), "--resume")
    assert resumed.returncode == 0, _output(resumed)
    final, problems = load_records([tmp_path])
    assert problems == [] and len(final) == 2
    assert_same_numbers(final, in_process)
    # only the failed run ran again
    ok_before = next(r for r in first if r["status"] == "ok")
    assert by_spec(final)[(ok_before["method"], ok_before["seed"])] == ok_before


def test_lost_raylet_whose_run_lives_on_leaves_that_runs_record(cluster, in_process, tmp_path):
    """Only Ray's processes of a node die (a raylet crash; the machine lives).

    The run's own process lives on, holding its spec's lock in ``--out``: Ray's retry on
    the other node finds the spec running and skips it, and the driver writes nothing for
    it (no "skipped" record). The record is the one the run writes when it finishes.
    """
    import psutil

    cluster.ensure_workers(2)
    cluster.reset_markers()
    try:
        driver = gmbench_run(cluster, "--plugins", "waits-for-go", "--seeds", "1x", "--out", str(tmp_path), wait=False)
        [(label, pid)] = cluster.wait_started(1, driver)
        cluster.kill(label, machine=False)
        driver.wait(timeout=SAFETY_S)
        output = _output(driver)
        assert driver.returncode == 0, output
        assert "skipped: another gmbench process is running this spec" in output, output
        assert psutil.pid_exists(pid), "the run's process did not outlive its raylet"
        assert list(tmp_path.rglob("*.json")) == []  # nothing written for a run that did not run there
    finally:
        cluster.go()
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=SAFETY_S)
    records, problems = load_records([tmp_path])
    assert problems == [] and len(records) == 1
    assert_same_numbers(records, in_process)
    assert not (tmp_path / "attempts").exists()
