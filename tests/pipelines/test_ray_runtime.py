"""A local run's Ray is reachable from this machine only."""

import ipaddress
import os
import subprocess
import sys
import time

import psutil
import pytest
import ray


def ray_process_details(detail) -> list:
    """detail(process) for every process this test session's Ray started (GCS, raylet, agents, workers)."""
    details = []
    for process in psutil.Process().children(recursive=True):
        try:
            details.append(detail(process))
        except psutil.Error:  # a process that ended meanwhile
            continue
    return details


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


@pytest.mark.usefixtures("local_ray")
def test_a_local_ray_listens_on_loopback_only():
    @ray.remote
    def ping():
        return "pong"

    assert ray.get(ping.remote()) == "pong"  # a worker process is up as well
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    listening = [(process.name(), c.laddr)
                 for process, connections in ray_process_details(lambda p: (p, p.net_connections(kind="inet")))
                 for c in connections if c.status == psutil.CONN_LISTEN]
    assert listening, "no Ray process found listening"
    assert [entry for entry in listening if not is_loopback(entry[1].ip)] == []


@pytest.mark.usefixtures("local_ray")
def test_ray_processes_find_their_own_state_api_even_with_another_ray_on_the_machine():
    """Ray Train's placement-group cleaner auto-detects the State API; with another Ray on the machine that
    picked the other one and killed a live run. Every process of our Ray is pinned to its own dashboard."""
    from ray.util.state import list_actors

    @ray.remote
    class Probe:
        def api_server(self):
            return os.environ.get("RAY_API_SERVER_ADDRESS")

    probe = Probe.remote()
    address = ray.get(probe.api_server.remote())
    assert address and address.startswith("http://127.0.0.1:")
    # That State API (token-authenticated, as the cleaner calls it) is this Ray's: it lists the probe actor.
    alive = {actor.actor_id for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")])}
    assert probe._actor_id.hex() in alive
    ray.kill(probe)
    assert "RAY_API_SERVER_ADDRESS" not in os.environ or os.environ["RAY_API_SERVER_ADDRESS"] != address


@pytest.mark.usefixtures("local_ray")
def test_a_local_ray_started_without_dashboard_is_restarted_with_one_for_ray_train():
    """`electra prepare` starts a local Ray without the dashboard; in `electra run`, pretraining follows in
    the same process and needs the dashboard (see above), so asking for it restarts that Ray."""
    from pipelines.ray_runtime import ensure_ray

    @ray.remote
    def api_server():
        return os.environ.get("RAY_API_SERVER_ADDRESS")

    ray.shutdown()
    try:
        ensure_ray(dashboard=False)
        assert ray.get(api_server.remote()) is None
        ensure_ray(dashboard=False)  # already running: kept
        ensure_ray()
        address = ray.get(api_server.remote())
        assert address and address.startswith("http://127.0.0.1:")
    finally:
        ensure_ray()  # the session's Ray, with its dashboard, for the tests after this one


@pytest.mark.usefixtures("local_ray")
def test_a_local_ray_keeps_no_idle_worker_processes_next_to_training():
    """Idle Ray workers slowed a 2-core training loop by 8%; the local Ray keeps none once work is done."""
    @ray.remote(num_cpus=1)
    def work():
        return 1

    assert ray.get([work.remote() for _ in range(2)]) == [1, 1]

    def idle_workers():
        titles = ray_process_details(lambda process: " ".join(process.cmdline()))
        return [title for title in titles if title.startswith("ray::IDLE")]

    deadline = time.monotonic() + 20
    while idle_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert idle_workers() == []


TRAIN_FUNCTION_PRINTS = """
import sys
import ray.train
from ray.train.torch import TorchTrainer
from pipelines.ray_runtime import ensure_ray, fit

def train_function():
    print("a line printed by the training function")

ensure_ray(sys.argv[1])
fit(TorchTrainer(train_function, scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1})))
"""


@pytest.mark.usefixtures("local_ray")
def test_a_line_printed_in_a_training_worker_reaches_the_terminal_once(tmp_path):
    """Ray Train's print patch printed every worker print twice (DeepSpeed's op loader's line, for one)."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_TRAIN_ENABLE_PRINT_PATCH"}
    done = subprocess.run([sys.executable, "-c", TRAIN_FUNCTION_PRINTS, ray.get_runtime_context().gcs_address],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (done.stdout + done.stderr).count("a line printed by the training function") == 1
