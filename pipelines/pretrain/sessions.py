"""Where a worker's training loop runs: under Ray Train (how the product launches it), or in plain processes
with no Ray at all (`pretrain.launcher: local`: this process alone, or each process that torchrun starts).

The loop asks its session three things: its rank and the world size, whether a preemption notice came, and to
commit the checkpoint directory that each rank has written locally (its shard; rank 0's also holds the marker).
Everything else (data order, restore, export) is the same code either way, so the pipeline's own step runs on
a machine without Ray.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket

import torch
import torch.distributed as dist

from electra_core import storage
from pipelines.pretrain import checkpoint as checkpoints

logger = logging.getLogger(__name__)


class RayTrainSession:
    """A Ray Train worker: Ray Train uploads checkpoints in the background, restarts failed workers, and relays
    a node's preemption notice."""

    uploads_in_background = True

    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def preemption_notice(self) -> bool:
        import ray.train

        return ray.train.get_preemption_info() is not None

    def commit_checkpoint(self, directory: str, step: int, metrics: dict) -> None:
        """directory: this rank's shard (and on rank 0 the marker); Ray Train uploads every rank's files into the
        same checkpoint directory."""
        import ray.train

        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=checkpoints.directory_name(step),
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
        )


class ProcessSession:
    """A plain process: rank and world size from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), else a
    world of one. Each rank copies its shard to storage itself, synchronously; rank 0 adds the marker once all
    have, then keeps the newest `keep`. There is no restart on failure: running the same command again resumes,
    as after any stop."""

    uploads_in_background = False

    def __init__(self, run_uri: str, keep: int, use_gpu: bool) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.run_uri, self.keep = run_uri, keep
        if use_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            if self.world_size == 1:  # a world of one still needs a rendezvous address for the process group
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", str(_free_port()))
                os.environ.setdefault("LOCAL_RANK", "0")  # deepspeed.initialize asserts that a launcher set it
            dist.init_process_group("nccl" if use_gpu else "gloo", rank=self.rank, world_size=self.world_size)

    def preemption_notice(self) -> bool:
        return False

    def commit_checkpoint(self, directory: str, step: int, metrics: dict) -> None:
        """Every rank copies its shard; once all have, rank 0 copies the marker, then prunes."""
        target = storage.join(self.run_uri, checkpoints.directory_name(step))
        names = sorted(os.listdir(directory))
        self._copy(directory, target, [name for name in names if name != checkpoints.MARKER])
        if self.world_size > 1:
            dist.barrier()  # every shard is in storage before the marker says the checkpoint is complete
        if checkpoints.MARKER in names:
            self._copy(directory, target, [checkpoints.MARKER])
            checkpoints.prune_checkpoints(self.run_uri, self.keep)
        shutil.rmtree(directory, ignore_errors=True)
        if self.world_size > 1:
            dist.barrier()  # no rank runs ahead of a checkpoint that is not committed yet

    @staticmethod
    def _copy(directory: str, target: str, names: list[str]) -> None:
        """Streamed file by file (fsspec's put_file), not read into memory: a shard can be gigabytes."""
        fs, path = storage.filesystem(target)
        fs.makedirs(path, exist_ok=True)
        for name in names:
            fs.put_file(os.path.join(directory, name), f"{path.rstrip('/')}/{name}")

    def close(self, wait_for_every_rank: bool = False) -> None:
        """wait_for_every_rank (after a run that ended normally): no rank tears down the process group while
        another still works (rank 0 writes the export after the others are done). After an error there is no
        wait: the other ranks may never arrive, and torchrun stops them."""
        if dist.is_initialized():
            if wait_for_every_rank and self.world_size > 1:
                dist.barrier()
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
