"""A real Ray head node (`ray start --head`) on 127.0.0.1, for tests that go through the Ray Jobs API.

Why it is started the way it is (Ray 2.60):

* `ray start --node-ip-address=127.0.0.1` alone is not enough: the CLI rewrites a loopback address to the
  machine's routable one (`services.resolve_ip_for_localhost`), so the head advertised the eth0 address
  and its GCS, raylet and agents listened on all interfaces. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 the
  node IP stays 127.0.0.1 and every Ray server of the head binds 127.0.0.1 only. Drivers started from
  outside need the same variable, or `ray.init(address="127.0.0.1:PORT")` is rewritten to the eth0
  address, where nothing listens.
* Token authentication stays on (RAY_AUTH_MODE=token, the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
  or ~/.ray/auth_token). A driver that joins with an explicit address does not switch token mode on by
  itself: without RAY_AUTH_MODE=token it sends no token and fails with "Failed to connect to Ray cluster".
  The Jobs client gets the token as an Authorization header.
* Every port is a free one (GCS, dashboard, dashboard agent, Ray client server, both metrics servers;
  workers take OS-assigned ports), and the temp dir is a fresh short one under /tmp, so the head does not
  collide with the `ray.init()` clusters of other tests (tests/pipelines/conftest.py) or with other
  Ray instances on the machine.
* `ray stop` is never used: it kills every Ray process of the user on the machine. The head runs as
  `ray start --block` in its own session; SIGTERM to that process shuts down exactly the processes it
  started. Anything of ours still alive after that (workers, job drivers, which Ray starts in sessions of
  their own) is killed by pid.
* The head runs from this venv's `ray`, with the venv's bin first on PATH, so workers and job drivers use
  the venv's Python and find its console scripts (`python`, `electra`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

VENV_BIN = Path(sys.executable).parent
RAY_CLI = VENV_BIN / "ray"

START_TIMEOUT_S = 120
STOP_GRACE_S = 30
# Plasma store size for the head: small, the tests move little data; Ray spills to disk beyond it.
OBJECT_STORE_BYTES = 1 << 30


@pytest.hookimpl(tryfirst=True)  # before `-m` selection runs
def pytest_collection_modifyitems(config, items):
    """Every test that uses the head cluster is slow (seconds to start, a job takes several more)."""
    for item in items:
        if "ray_head_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all held open together, so none is handed out twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _auth_headers() -> dict[str, str]:
    """The Authorization header for the dashboard, from the token Ray itself would use; creates the token
    (~/.ray/auth_token) on a machine that has none yet, as `ray get-auth-token --generate` does."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()
    headers = loader.get_token_for_http_header(ignore_auth_mode=True)
    assert headers, "Ray token authentication is on but no token could be loaded"
    return headers


@dataclass
class JobRun:
    job_id: str
    status: str
    logs: str
    seconds: float


@dataclass
class RayHeadCluster:
    """A running head node. `env` holds what a subprocess (a driver, or the `ray job` CLI) needs to talk to
    it; `subprocess_env()` is the full environment for such a subprocess."""

    gcs_address: str  # "127.0.0.1:PORT"
    dashboard_url: str  # "http://127.0.0.1:PORT"
    temp_dir: Path
    env: dict[str, str]
    pid: int  # the `ray start --block` process, leader of the head's session
    startup_s: float = 0.0
    _headers: dict[str, str] = field(default_factory=dict, repr=False)

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_ENV_KEYS}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.env)
        env.update(extra)
        return env

    def job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=dict(self._headers))

    def processes(self) -> list[psutil.Process]:
        """The head's processes alive now: its session, plus their descendants (workers, job drivers)."""
        return _cluster_processes(self.pid)

    def submit_and_wait(self, entrypoint: str, runtime_env: dict | None = None, timeout_s: float = 300,
                        expected: str = "SUCCEEDED", **submit_kwargs) -> JobRun:
        """Submits a job, waits until it is finished, and returns its status and logs. A job that ends in
        another status than `expected`, or runs past `timeout_s` (it is then stopped), fails the test with
        the job's logs printed."""
        from ray.job_submission import JobStatus

        client = self.job_client()
        started = time.monotonic()
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, **submit_kwargs)
        status = client.get_job_status(job_id)
        while not status.is_terminal():
            if time.monotonic() - started > timeout_s:
                client.stop_job(job_id)
                logs = client.get_job_logs(job_id)
                _print_job(job_id, f"still {status} after {timeout_s:.0f} s (stopped)", logs)
                pytest.fail(f"job {job_id} did not finish within {timeout_s:.0f} s; logs:\n{logs[-8000:]}")
            time.sleep(0.5)
            status = client.get_job_status(job_id)
        run = JobRun(job_id, str(status.value), client.get_job_logs(job_id), time.monotonic() - started)
        if run.status != JobStatus(expected).value:
            info = client.get_job_info(job_id)
            _print_job(job_id, f"{run.status} ({info.message})", run.logs)
            pytest.fail(f"job {job_id} ended {run.status}, expected {expected}: {info.message}\n"
                        f"logs:\n{run.logs[-8000:]}")
        return run


# Variables a client or driver needs; they are never put into this process's own environment, where
# they would redirect the `ray.init()` of other tests to this cluster.
_CLUSTER_ENV_KEYS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def _print_job(job_id: str, what: str, logs: str) -> None:
    print(f"--- Ray job {job_id}: {what}; logs:\n{logs}\n--- end of job {job_id}", flush=True)


def _cluster_processes(leader: int) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == leader and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
        except (OSError, psutil.Error):
            continue
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                if child.status() != psutil.STATUS_ZOMBIE:
                    found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(found.values())


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Waits until none of `procs` runs (a zombie counts as gone: nobody may reap it); returns those left."""
    deadline = time.monotonic() + timeout_s
    while (alive := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _log_tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def start_head(root: Path) -> tuple[RayHeadCluster, subprocess.Popen]:
    headers = _auth_headers()
    gcs_port, dashboard_port, agent_port, client_port, dash_metrics, autoscaler_metrics = _free_ports(6)
    env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_ENV_KEYS}
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        # On SIGTERM, `ray start --block` first drains the node, waiting up to 30 s for running tasks and
        # jobs; a test cluster has nothing to hand over.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "DASHBOARD_METRIC_PORT": str(dash_metrics),
        "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics),
    })
    command = [
        str(RAY_CLI), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}", f"--ray-client-server-port={client_port}",
        "--min-worker-port=0", "--max-worker-port=0",
        f"--num-cpus={os.cpu_count() or 2}", f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={root}",
    ]
    log_path = root / "ray-start.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    gcs_address = f"127.0.0.1:{gcs_port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    cluster = RayHeadCluster(
        gcs_address=gcs_address,
        dashboard_url=dashboard_url,
        temp_dir=root,
        env={
            "RAY_ADDRESS": gcs_address,
            "RAY_API_SERVER_ADDRESS": dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        },
        pid=process.pid,
        _headers=headers,
    )
    # Up when the Jobs API answers an authenticated request.
    last_error: Exception | None = None
    while time.monotonic() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            stop_head(process)  # whatever it had started already
            raise RuntimeError(f"`ray start --head` exited with {process.returncode}:\n{_log_tail(log_path)}")
        try:
            cluster.job_client().list_jobs()
            cluster.startup_s = time.monotonic() - started
            return cluster, process
        except Exception as error:  # noqa: BLE001 - not up yet: connection refused, 404 before the job module
            last_error = error
            time.sleep(0.5)
    stop_head(process)
    raise RuntimeError(f"Ray head not ready after {START_TIMEOUT_S} s ({last_error!r}):\n{_log_tail(log_path)}")


def stop_head(process: subprocess.Popen) -> float:
    """SIGTERM to `ray start --block`, which stops the processes it started; then SIGKILL to whatever of
    ours is left. Returns the seconds it took."""
    started = time.monotonic()
    ours = _cluster_processes(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    # Workers and job drivers can outlive their raylet for a moment; give them a few seconds.
    ours += _cluster_processes(process.pid)
    for proc in _wait_gone(ours, timeout_s=5):
        try:
            proc.kill()
        except psutil.Error:
            pass
    _wait_gone(ours, timeout_s=5)
    return time.monotonic() - started


@pytest.fixture(scope="session")
def ray_head_cluster():
    """A Ray head node started with `ray start --head` on 127.0.0.1 for this test session, with the
    dashboard and Jobs API. Yields a RayHeadCluster; stops only this head's processes afterwards."""
    root = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
    try:
        cluster, process = start_head(root)
    except RuntimeError as error:  # a port taken between choosing it and Ray binding it: once more
        print(f"\nRay head did not start, retrying with other ports: {error}", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        root = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
        cluster, process = start_head(root)
    print(f"\nRay head up in {cluster.startup_s:.1f} s: GCS {cluster.gcs_address}, "
          f"dashboard {cluster.dashboard_url}", flush=True)
    try:
        yield cluster
    finally:
        seconds = stop_head(process)
        print(f"\nRay head stopped in {seconds:.1f} s", flush=True)
        shutil.rmtree(root, ignore_errors=True)
