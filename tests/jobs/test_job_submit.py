"""`ray job submit` of the tiny training job against a local `ray start --head` cluster, and a second raylet.

What these tests run is what docs/cluster.md tells a user to run: `ray start --head` with the dashboard,
`ray job submit --working-dir . -- python -m jobs.train --config ...`, `ray start --address` for another node.

How they stay out of the way of every other Ray on the machine (other tests' `ray_session`, other people):
- Each node runs `ray start --block` in its own session under a private `--temp-dir`. Ray writes the address
  file `ray_current_cluster` into that temp dir, so a bare `ray.init()` elsewhere (it reads the default
  /tmp/ray/ray_current_cluster) never joins this cluster. Every port is given explicitly (GCS, dashboard,
  dashboard agent, client server): the defaults (6379, 8265, 52365, 10001) would collide with other clusters.
- `ray stop` is never called: in Ray 2.60 it has no address option and terminates every Ray process on the
  machine. Instead the test sends SIGTERM to its own `ray start --block` processes (their handler kills
  the node's processes), then SIGKILL to what is left of their process groups, then to any process whose
  command line or working directory lies in the private temp dir (workers and the job's driver). The
  `ray start` processes also get SIGTERM when this test process dies (PR_SET_PDEATHSIG), so a killed pytest
  leaves no cluster behind.
- The second node: Ray 2.60's `ray start --address` refuses to start a worker node while
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ("Multi-node Ray clusters are not supported on Windows and OSX"),
  and with it set to 1 it rewrites 127.0.0.1 (in --address and --node-ip-address) to the machine's external
  address, so that node would bind the external interface. `SECOND_NODE_LAUNCHER` runs the same `ray start`
  command with only its multi-node check seeing clusters enabled; every node process keeps the variable at 0
  and binds 127.0.0.1, as the nodes of Ray's own single-machine test clusters (ray.cluster_utils) do.
- The job's interpreter: the job runs `python` from the PATH of the head node's processes; the head starts
  with this interpreter's bin directory first on PATH (as an activated virtual environment would).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = "tests/jobs/configs/submit_tiny.yaml"  # relative to the repository root = the job's working directory
BIN_DIR = Path(sys.executable).parent  # holds `ray` and the `python` the job must run with
START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 480.0  # the job takes ~30 s on an idle 2-core machine; far longer when the cores are shared

# `ray start ...` with its worker-node check seeing multi-node clusters enabled (see the module docstring).
SECOND_NODE_LAUNCHER = (
    "import sys, types\n"
    "import ray._private.ray_constants as constants\n"
    "import ray.scripts.scripts as cli\n"
    "view = types.ModuleType(constants.__name__)\n"
    "view.__dict__.update(constants.__dict__)\n"
    "view.ENABLE_RAY_CLUSTER = True  # read by `ray start` for this check only\n"
    "cli.ray_constants = view\n"
    "sys.argv[0] = 'ray'\n"
    "sys.exit(cli.main())\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_env() -> dict[str, str]:
    """Loopback, no token auth, no usage stats, this interpreter first on PATH, no inherited address."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    return env


def terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when this test process dies (even by SIGKILL), so that a killed
    pytest does not leave a cluster behind (`ray start --block` stops its node on SIGTERM)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else f"({path} missing)"


class LocalCluster:
    """A head node (`ray start --head --block`) and optional extra nodes, all under the private dir `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.head_temp_dir = root / "ray"  # Ray's default temp dir for processes with RAY_TMPDIR=root
        self.nodes: list[tuple[subprocess.Popen, Path]] = []  # (the `ray start --block` process, its log)

    def _launch(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(argv, env=ray_env(), stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                       start_new_session=True,  # own process group: stopped as a whole
                                       preexec_fn=terminate_with_parent)
        self.nodes.append((process, log))
        return process

    def start_head(self, num_cpus: int) -> None:
        self._launch("head", [
            str(BIN_DIR / "ray"), "start", "--head", "--block", "--port", str(self.gcs_port),
            "--num-cpus", str(num_cpus), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port), "--dashboard-agent-listen-port", str(free_port()),
            "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.head_temp_dir),
            "--disable-usage-stats"])
        self._wait(lambda: self._get(f"{self.dashboard_url}/api/version") is not None, "the head's dashboard")
        # Written last by `ray start`; a bare ray.init() whose Ray temp dir is this one would join this cluster.
        self._wait((self.head_temp_dir / "ray_current_cluster").is_file, "the head's address file")

    def add_node(self, name: str, num_cpus: int) -> subprocess.Popen:
        """A second raylet on this machine, joining the head over loopback."""
        process = self._launch(name, [
            sys.executable, "-c", SECOND_NODE_LAUNCHER, "start", "--block", "--address", self.gcs_address,
            "--num-cpus", str(num_cpus), "--dashboard-agent-listen-port", str(free_port()),
            "--temp-dir", str(self.root / name), "--disable-usage-stats"])
        expected = len(self.nodes)
        self._wait(lambda: len(self.alive_nodes()) == expected, f"node {name!r} to join")
        return process

    def alive_nodes(self) -> list:
        from ray.util.state import list_nodes

        try:
            return [n for n in list_nodes(address=self.dashboard_url) if n.state == "ALIVE"]
        except Exception:  # dashboard still starting
            return []

    def submit(self, submission_id: str, *train_args: str) -> subprocess.CompletedProcess:
        """`ray job submit` (waits for the end and streams the job's log), run from the repository root."""
        argv = [str(BIN_DIR / "ray"), "job", "submit", "--address", self.dashboard_url,
                "--submission-id", submission_id, "--working-dir", ".", "--",
                "python", "-m", "jobs.train", "--config", CONFIG, *train_args]
        try:
            return subprocess.run(argv, env=ray_env(), cwd=REPO, capture_output=True, text=True,
                                  timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.job_client().stop_job(submission_id)
            raise AssertionError(f"job {submission_id} still running after {JOB_TIMEOUT_S:g} s; "
                                 f"log tail:\n{self.job_client().get_job_logs(submission_id)[-3000:]}") from None

    def job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url)

    def stop_node(self, process: subprocess.Popen) -> None:
        """SIGTERM to `ray start --block` (it stops its node's processes), then SIGKILL to its group."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def stop(self) -> None:
        for process, _ in reversed(self.nodes):
            self.stop_node(process)
        # Workers and the job's driver live in process groups of their own; they belong to this cluster
        # when their command line or working directory lies in its private temp dir.
        inside = str(self.root) + os.sep
        for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
            try:
                if proc.pid != os.getpid() and (inside in " ".join(proc.info["cmdline"] or ())
                                                or f"{proc.info['cwd'] or ''}{os.sep}".startswith(inside)):
                    proc.kill()
            except psutil.Error:
                pass

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{tail(log)}" for _, log in self.nodes)

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            dead = [log.name for process, log in self.nodes if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"waiting for {what}: " + (f"{dead} exited" if dead else
                                   f"not ready after {START_TIMEOUT_S:g} s") + f"\n{self.logs()}")
            time.sleep(0.5)

    @staticmethod
    def _get(url: str) -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            return None


@pytest.fixture(scope="module")
def cluster():
    """One head node (4 CPUs, dashboard) for this module; always stopped, and only it."""
    # A short root: Ray's unix sockets live below it and socket paths are limited to 107 bytes.
    local = LocalCluster(Path(tempfile.mkdtemp(prefix="unigrpo-ray-", dir="/tmp")))
    try:
        local.start_head(num_cpus=4)
        yield local
    finally:
        local.stop()
        shutil.rmtree(local.root, ignore_errors=True)  # failures already carry the log tails


def submitted_run(cluster: LocalCluster, submission_id: str, run_dir: Path, *train_args: str) -> dict:
    """Submit the tiny job writing into `run_dir`, assert it SUCCEEDED, and return its summary.json."""
    from ray.job_submission import JobStatus

    started = time.perf_counter()
    result = cluster.submit(submission_id, f"--set=run.output_dir={run_dir.parent}",
                            f"--set=run.name={run_dir.name}", *train_args)
    status = cluster.job_client().get_job_status(submission_id)
    assert result.returncode == 0 and status == JobStatus.SUCCEEDED, (
        f"job {submission_id}: exit code {result.returncode}, status {status}\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    print(f"{submission_id}: `ray job submit` returned after {time.perf_counter() - started:.1f} s")
    return json.loads((run_dir / "summary.json").read_text())


def configured_steps() -> int:
    return yaml.safe_load((REPO / CONFIG).read_text())["run"]["steps"]


def test_ray_job_submit_runs_the_tiny_job_to_completion(cluster, tmp_path):
    run_dir = tmp_path / "single"
    summary = submitted_run(cluster, "unigrpo-submit-single", run_dir)

    steps = configured_steps()
    assert summary["final_step"] == steps
    assert summary["policy_version"] == steps  # one update per step, every step had scored rows
    assert summary["worker_versions"] == [steps, steps]
    assert len(set(summary["learner_checksums"])) == 1  # both ZeRO-2 ranks hold the same weights
    assert summary["worker_checksums"] == summary["learner_checksums"]  # the last sync reached the workers
    logged_steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged_steps == list(range(1, steps + 1))
    assert (run_dir / "checkpoints" / f"step_{steps}" / "COMPLETE").is_file()
    assert (run_dir / "export" / "config.json").is_file()


def test_impossible_resources_fail_the_submitted_job_before_any_actor_naming_the_key(cluster, tmp_path):
    """Inside the job, init_ray checks the config against the live nodes (4 CPUs): 2 learner ranks + 8
    rollout workers x 1 CPU cannot be placed, and the job fails with the config keys in its log."""
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors

    result = cluster.submit("unigrpo-submit-too-big", f"--set=run.output_dir={tmp_path}",
                            "--set=rollout.num_workers=8")
    client = cluster.job_client()
    assert result.returncode != 0
    assert client.get_job_status("unigrpo-submit-too-big") == JobStatus.FAILED
    log = client.get_job_logs("unigrpo-submit-too-big")
    assert "rollout.num_workers" in log and "10 CPU requested but the cluster has 4" in log, log[-3000:]
    job_id = client.get_job_info("unigrpo-submit-too-big").job_id
    assert [a.class_name for a in list_actors(address=cluster.dashboard_url, limit=1000)
            if a.job_id == job_id] == []


def test_second_raylet_on_this_machine_receives_rollout_workers(cluster, tmp_path):
    second = cluster.add_node("second", num_cpus=2)
    try:
        run_dir = tmp_path / "multinode"
        # STRICT_SPREAD: each role's bundles on distinct nodes, so with 2 nodes one rollout worker and one
        # learner rank land on the second node.
        summary = submitted_run(cluster, "unigrpo-submit-multinode", run_dir,
                                "--set=cluster.placement_strategy=STRICT_SPREAD")
        from ray.util.state import list_actors

        nodes = cluster.alive_nodes()
        head = next(n.node_id for n in nodes if n.is_head_node)
        other = next(n.node_id for n in nodes if not n.is_head_node)
        job_id = cluster.job_client().get_job_info("unigrpo-submit-multinode").job_id
        actors = [a for a in list_actors(address=cluster.dashboard_url, limit=1000, detail=True)
                  if a.job_id == job_id]
        rollout_nodes = {a.name: a.node_id for a in actors if a.class_name == "RolloutWorker"}
        learner_nodes = sorted(a.node_id for a in actors if a.class_name == "LearnerRank")
    finally:
        cluster.stop_node(second)

    assert sorted(rollout_nodes) == [f"{run_dir.name}-rollout-0.0", f"{run_dir.name}-rollout-1.0"]  # no restarts
    assert set(rollout_nodes.values()) == {head, other}  # one rollout worker ran on the second raylet
    assert learner_nodes == sorted([head, other])
    steps = configured_steps()
    assert summary["policy_version"] == steps
    assert summary["worker_checksums"] == summary["learner_checksums"]  # weights synced across nodes
    # Both ranks (one per node) wrote their ZeRO shards into the one checkpoint directory.
    checkpoint = run_dir / "checkpoints" / f"step_{steps}"
    assert sorted(p.name for p in checkpoint.rglob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_a_local_run_starts_its_own_ray_even_when_a_ray_start_cluster_runs_here(cluster):
    """Without `cluster.address`, init_ray starts a Ray of its own: a bare ray.init() would find this
    cluster in <ray temp dir>/ray_current_cluster (as after any `ray start --head` on the machine) and
    reject num_cpus. RAY_TMPDIR makes the module's head the cluster that the child's Ray would find."""
    probe = ("import json, ray\n"
             "from actors.cluster import init_ray\n"
             "from actors.config import ClusterConfig\n"
             "nodes = init_ray(ClusterConfig(num_cpus=1, num_gpus=0))\n"
             "print(json.dumps({'gcs': ray.get_runtime_context().gcs_address, 'nodes': nodes}))\n"
             "ray.shutdown()\n")
    result = subprocess.run([sys.executable, "-c", probe], env=dict(ray_env(), RAY_TMPDIR=str(cluster.root)),
                            cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    started = json.loads(result.stdout.strip().splitlines()[-1])
    assert started["gcs"] != cluster.gcs_address
    assert started["nodes"] == [{"CPU": 1.0, "GPU": 0.0}]  # its own node, not the head's 4 CPUs
