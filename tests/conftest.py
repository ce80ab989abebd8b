"""Suite-wide settings: keep Ray on loopback, DeepSpeed on CPU, and nothing on the network.

These are set before any test module imports ray or deepspeed (pytest imports conftest first).
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # otherwise Ray binds the external interface
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # token auth breaks `ray status`/`ray job submit` in tests
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402

RAY_CPUS = 4  # logical CPUs: 2 learner ranks + 2 rollout workers at once (the machine may have fewer cores)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (loopback, no dashboard) for every test that needs actors."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one intra-op thread is ~10x faster than two on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


class SocketWatch:
    """Polls (every 0.1 s, in a thread) the TCP sockets listening in this process and its descendants
    (the local Ray's processes and actors among them); `seen` maps (address, port) -> process name."""

    def __init__(self):
        import threading

        self.seen: dict[tuple[str, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def poll(self) -> None:
        import psutil

        me = psutil.Process()
        pids = {me.pid} | {child.pid for child in me.children(recursive=True)}
        for conn in psutil.net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = f"pid {conn.pid}"
                self.seen[(conn.laddr.ip, conn.laddr.port)] = name

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.poll()

    def wildcard(self) -> dict[tuple[str, int], str]:
        """The sockets seen listening on all interfaces."""
        self.poll()
        return {key: name for key, name in self.seen.items() if key[0] in WILDCARD_ADDRESSES}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def socket_watch():
    """A SocketWatch running for the duration of the test."""
    watch = SocketWatch()
    yield watch
    watch.stop()
