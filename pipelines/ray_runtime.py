"""Starting or joining Ray: the one place that decides which cluster a command runs on."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None) -> None:
    """Joins the cluster at `address` or RAY_ADDRESS; without either, starts a local Ray on 127.0.0.1.

    Inside a Ray job (ray job submit) RAY_ADDRESS is set, so the same command joins that cluster.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    ray.init(
        include_dashboard=False,
        # Local runs listen on loopback only.
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_storage(uri: str) -> tuple[str, object | None]:
    """(storage_path, pyarrow filesystem) for Ray Train: the same fsspec filesystem the rest of the code uses."""
    if "://" not in uri or uri.startswith("file://"):
        return os.path.abspath(uri.removeprefix("file://")), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from electra_core import storage

    fs, path = storage.filesystem(uri)
    return path, PyFileSystem(FSSpecHandler(fs))
