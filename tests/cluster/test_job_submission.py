"""A job through the Ray Jobs API on a real `ray start --head` cluster on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent("""
    import json
    import os
    import sys

    import ray

    ray.init()  # joins the cluster through the RAY_ADDRESS the job supervisor sets


    @ray.remote
    def square(x):
        import helper  # from the job's working_dir, on the workers too

        return helper.square(x)


    result = {
        "squares": ray.get([square.remote(i) for i in range(5)]),
        "ray_address": os.environ.get("RAY_ADDRESS"),
        "node_ips": sorted({node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}),
        "sys_prefix": sys.prefix,
        "cwd_has_driver": os.path.exists("driver.py"),
    }
    with open(sys.argv[1], "w") as out:
        json.dump(result, out)
    print("driver done")
""")


def test_job_with_working_dir_succeeds(ray_head_cluster, tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    (work / "driver.py").write_text(DRIVER)
    (work / "helper.py").write_text("def square(x):\n    return x * x\n")
    output = tmp_path / "result.json"

    run = ray_head_cluster.submit_and_wait(f"python driver.py {output}",
                                           runtime_env={"working_dir": str(work)}, timeout_s=240)

    assert "driver done" in run.logs
    result = json.loads(output.read_text())
    assert result["squares"] == [0, 1, 4, 9, 16]
    assert result["ray_address"] == ray_head_cluster.gcs_address
    assert result["node_ips"] == ["127.0.0.1"]
    # The driver ran with this venv's Python (the head's PATH), in the unpacked working_dir.
    assert Path(result["sys_prefix"]).resolve() == Path(sys.prefix).resolve()
    assert result["cwd_has_driver"]


def test_failed_job_is_reported_with_its_logs(ray_head_cluster):
    run = ray_head_cluster.submit_and_wait("python -c 'import sys; print(\"boom\"); sys.exit(3)'",
                                           expected="FAILED", timeout_s=120)
    assert run.status == "FAILED"
    assert "boom" in run.logs


def test_outside_driver_joins(ray_head_cluster, tmp_path):
    """A driver started outside Ray joins with the fixture's env (RAY_ADDRESS, token mode, loopback IP)."""
    code = ("import ray; ray.init(); "
            "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']), "
            "ray.get(ray.remote(lambda: 6 * 7).remote()))")
    done = subprocess.run([sys.executable, "-c", code], env=ray_head_cluster.subprocess_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "['127.0.0.1'] 42"


def test_head_listens_on_loopback_only(ray_head_cluster):
    listening = []
    for proc in ray_head_cluster.processes():
        try:
            connections = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        listening += [(proc.name(), conn.laddr.ip, conn.laddr.port) for conn in connections
                      if conn.status == psutil.CONN_LISTEN]
    ports = {port for _, _, port in listening}
    gcs_port = int(ray_head_cluster.gcs_address.rsplit(":", 1)[1])
    dashboard_port = int(ray_head_cluster.dashboard_url.rsplit(":", 1)[1])
    assert {gcs_port, dashboard_port} <= ports, listening

    assert [entry for entry in listening if not _loopback(entry[1])] == []


def _loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or 127.x in IPv4-mapped form (gRPC servers listen on IPv6 sockets)."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)
