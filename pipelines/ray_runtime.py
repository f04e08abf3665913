"""Starting or joining Ray: the one place that decides which cluster a command runs on."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from pipelines.environment import scoped_environment

logger = logging.getLogger(__name__)


# Ray keeps one idle worker process per CPU ready for tasks. Next to a training worker that uses every core they
# cost more than their CPU time: on 2 cores a plain torch loop ran 8% slower beside an idle local Ray with them
# (1,464 against 1,585 tokens/s, mean of 5 runs each) and as fast as alone without them. A local Ray that trains
# starts none and keeps none; a worker process is started when an actor needs one (about a second).
NO_IDLE_WORKERS = {"enable_worker_prestart": False, "prestart_worker_first_driver": False, "num_workers_soft_limit": 0}
# Set while this process runs a local Ray it started without a dashboard (see ensure_ray).
_local_without_dashboard = False
# Set while this process runs a local Ray it started (with or without a dashboard).
_started_local = False


def ensure_ray(address: str | None = None, dashboard: bool = True) -> None:
    """Joins the cluster at `address` or RAY_ADDRESS; without either, starts a local Ray on 127.0.0.1.

    Inside a Ray job (ray job submit) RAY_ADDRESS is set, so the same command joins that cluster.
    `dashboard=False` is for stages that do not use Ray Train (prepare): a local Ray then starts a second or
    so sooner and runs fewer background processes. A later stage that asks for the dashboard restarts such a
    local Ray with it.
    """
    global _local_without_dashboard, _started_local
    import ray

    # Ray's usage statistics go to Anyscale's servers; this pipeline runs offline, so they are off unless a user
    # sets RAY_USAGE_STATS_ENABLED=1. Off, Ray Data also skips its usage-collection actor (a process per cluster).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    if ray.is_initialized():
        if not (dashboard and _local_without_dashboard):
            return
        ray.shutdown()
        _local_without_dashboard = False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        _started_local = False
        return
    _started_local = True
    keep_local_ray_on_loopback()
    options = {"_node_ip_address": "127.0.0.1", "log_to_driver": True, "configure_logging": True,
               "logging_level": logging.WARNING}
    if not dashboard:
        ray.init(include_dashboard=False, **options)
        _local_without_dashboard = True
        return
    port = free_loopback_port()
    # Ray Train's placement-group cleaner asks the State API whether the run's controller is alive. The dashboard
    # serves that API (without it the cleaner warns every few seconds for the whole run), and the cleaner finds
    # it by auto-detection, which picks the newest Ray on the machine: with a second Ray started next to a run,
    # it asked the other one, found no controller and removed the live run's placement group, killing its
    # worker (seen here). RAY_API_SERVER_ADDRESS, set while Ray starts, pins every process of this Ray to its own
    # dashboard; the driver's environment is restored after.
    with scoped_environment(RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{port}"):
        context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                           _system_config=NO_IDLE_WORKERS, **options)
    _local_without_dashboard = False
    if context.dashboard_url:
        logger.info("local Ray dashboard: http://%s", context.dashboard_url)


def fit(trainer):
    """trainer.fit() with Ray Train's print patch off (unless the user set RAY_TRAIN_ENABLE_PRINT_PATCH).

    Ray Train 2.60 replaces print in its workers with one that logs the line and, since Ray wraps a worker's
    stdout, also prints it: every print in a training worker (DeepSpeed's op loader, for one) reached the
    terminal twice. Train hands the variable from the driver to its controller and workers.
    """
    previous = signal.getsignal(signal.SIGINT)
    interrupted = note_sigint_under_ray_train(trainer)
    try:
        with scoped_environment(RAY_TRAIN_ENABLE_PRINT_PATCH=os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")):
            result = trainer.fit()
    except BaseException:
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)  # not Ray Train's handler, whose controller is gone
    if interrupted.is_set():
        raise KeyboardInterrupt
    return result


def note_sigint_under_ray_train(trainer) -> threading.Event:
    """An event set when Ctrl-C reaches the driver during trainer.fit().

    Ray Train installs its own SIGINT handler in fit(): it asks the run's controller to abort, and fit() then
    ends in a RayActorError, or in sys.exit(0) when the controller was already gone: a traceback or nothing, and
    exit status 1 either way. Joined to a cluster, its handler is kept (the abort stops the run's workers there)
    and wrapped, so that the stage ends in KeyboardInterrupt: one line and exit status 130. On a local Ray this
    process started, a terminal's Ctrl-C reaches Ray's own processes too, and the abort waited ~9 s on a dying
    controller while the worker trained on; there the handler raises KeyboardInterrupt at once, and the exit
    shuts the local Ray and its workers down. The wrapped method is Ray Train's own (2.60); without it, Ray's
    behaviour is left as it is.
    """
    interrupted = threading.Event()
    register = getattr(trainer, "_register_sigint_handler", None)
    if register is None:
        return interrupted

    def register_and_note(controller) -> None:
        register(controller)
        ray_handler = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            interrupted.set()
            if _started_local or not callable(ray_handler):
                raise KeyboardInterrupt
            ray_handler(signum, frame)

        signal.signal(signal.SIGINT, handler)

    trainer._register_sigint_handler = register_and_note
    return interrupted


def release_ray() -> None:
    """Stops the local Ray this process started, or leaves the cluster it joined; nothing if neither."""
    global _local_without_dashboard, _started_local
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _local_without_dashboard = _started_local = False


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keep_local_ray_on_loopback() -> None:
    """A local run is one node: everything it starts (GCS, raylet, object manager, workers) listens on
    127.0.0.1 only. Ray otherwise replaces 127.0.0.1 with the machine's routable address so that other nodes
    could join; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is its switch for single-node mode. Ray reads it once, at
    import, so the constant is set as well; the variable carries it to every process this Ray starts."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def check_workers_fit(workers: int, cpus_per_worker: int, gpus_per_worker: int, stage: str) -> None:
    """On a local Ray this process started, a worker group larger than the machine is refused now: Ray Train
    would wait for the resources forever ("Requesting resources" and nothing else). A cluster joined may grow
    (an autoscaler), so there the wait is left to Ray."""
    import ray

    from pipelines.errors import InputError

    if not _started_local:
        return
    have = ray.cluster_resources()
    for resource, each in (("CPU", cpus_per_worker), ("GPU", gpus_per_worker)):
        needed = workers * each
        if needed > have.get(resource, 0):
            raise InputError(
                f"{stage}.workers {workers} x {stage}.{resource.lower()}s_per_worker {each} need {needed} "
                f"{resource}{'s' if needed != 1 else ''}; this machine has {int(have.get(resource, 0))}. "
                "Use fewer workers, or join a cluster with --address")


def ray_storage(uri: str) -> tuple[str, object | None]:
    """(storage_path, pyarrow filesystem) for Ray Train: the same fsspec filesystem the rest of the code uses."""
    if "://" not in uri or uri.startswith("file://"):
        return os.path.abspath(uri.removeprefix("file://")), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from electra_core import storage

    fs, path = storage.filesystem(uri)
    return path, PyFileSystem(FSSpecHandler(fs))
