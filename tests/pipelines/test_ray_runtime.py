"""A local run's Ray is reachable from this machine only."""

import ipaddress

import psutil
import pytest
import ray


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
    listening = []
    for process in psutil.Process().children(recursive=True):  # GCS, raylet, agents, workers
        try:
            listening += [(process.name(), c.laddr) for c in process.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:  # a process that ended meanwhile
            continue
    assert listening, "no Ray process found listening"
    assert [entry for entry in listening if not is_loopback(entry[1].ip)] == []
