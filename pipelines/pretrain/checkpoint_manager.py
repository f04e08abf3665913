"""The training side of checkpoints: what a run resumes from, and when and how it saves.

The format (sharded safetensors, the verified marker, ZeRO-aware gather and restore) is in
pipelines.pretrain.checkpoint; this object decides. A run resumes from the newest checkpoint that verifies,
saves every `checkpoint_every` steps and at its last step, and once more when a preemption notice arrives
between two of those saves.
"""

from __future__ import annotations

import logging
import tempfile
import time

import torch
import torch.distributed as dist

from pipelines.pretrain import checkpoint as checkpoints

logger = logging.getLogger(__name__)


class CheckpointManager:
    """One worker's checkpoints: built before the model (it finds what to resume from), asked after every step."""

    def __init__(self, run_uri: str, checkpoint_every: int, end_step: int, log=logger.info):
        self.checkpoint_every, self.end_step, self.log = checkpoint_every, end_step, log
        self.resumed: checkpoints.LoadedCheckpoint | None = checkpoints.latest_good_checkpoint(run_uri, log=log)
        self.start_step = self.resumed.step if self.resumed is not None else 0
        self.preemption_saved = False

    def load_weights(self, model: torch.nn.Module) -> None:
        """Before the engine exists: the resumed weights into the freshly built model (nothing if fresh)."""
        if self.resumed is not None:
            checkpoints.load_module_weights(model, self.resumed)

    def restore_optimizer(self, engine, manifest: dict, world_size: int) -> int:
        """After the engine exists: the optimizer's state, then the local copies are let go. Returns the step at
        which the run began reading the current dataset (see data_segment_start)."""
        if self.resumed is None:
            return 0
        resumed, self.resumed = self.resumed, None
        try:
            checkpoints.restore_optimizer_state(engine, resumed)
            data_start = data_segment_start(resumed.trainer_state, resumed.step, manifest, self.log)
            self.log(f"resumed from {resumed.uri} at step {resumed.step} (written by "
                     f"{resumed.trainer_state['world_size']} workers; now {world_size})")
        finally:
            resumed.close()
        return data_start

    def after_step(self, engine, run, done: int, preempted: bool, record: dict) -> float:
        """Saves what is due after step `done` completed, with `record` (the latest log window's metrics) as
        the checkpoint's metrics; returns the seconds training was blocked."""
        blocked = 0.0
        if preempted and not self.preemption_saved and done % self.checkpoint_every:
            self.log(f"preemption notice: saving a checkpoint at step {done} before the node goes")
            blocked += self.save(engine, run, done, record)
            self.preemption_saved = True
        if done % self.checkpoint_every == 0 or done == self.end_step:
            blocked += self.save(engine, run, done, record)
        return blocked

    def save(self, engine, run, step: int, record: dict) -> float:
        """Every rank gathers and writes its own shard locally, rank 0 adds the marker listing all of them, and
        the session commits each rank's directory (Ray Train uploads them in the background, into one
        checkpoint). `run` is the worker's WorkerRun. Returns the seconds training was blocked."""
        started = time.perf_counter()
        params, moments, optimizer_step = checkpoints.gather_state_shard(engine, run.rank, run.world_size)
        directory = tempfile.mkdtemp(prefix="electra-checkpoint-")
        listing = checkpoints.write_shard(directory, run.rank, run.world_size, params, moments)
        del params, moments
        listings = [None] * run.world_size
        if run.world_size > 1:
            dist.all_gather_object(listings, listing)
        else:
            listings = [listing]
        if run.rank == 0:
            checkpoints.write_marker(directory, run.trainer_state(step, optimizer_step), listings)
            if run.metrics is not None:
                run.metrics.flush()
            run.sample_log.flush()
        blocked = time.perf_counter() - started
        run.session.commit_checkpoint(
            directory, step, {**{k: v for k, v in record.items() if v is not None}, "step": step,
                              "checkpoint_blocked_s": blocked})
        blocked = time.perf_counter() - started
        if run.rank == 0:
            upload = " (upload continues in the background)" if run.session.uploads_in_background else ""
            self.log(f"checkpoint at step {step}: training blocked {blocked:.2f} s{upload}")
            if run.metrics is not None:
                run.metrics.note(step, checkpoint_blocked_s=blocked)
        return blocked


def data_segment_start(trainer_state: dict, step: int, manifest: dict, log) -> int:
    """The step at which the run began reading the current dataset.

    Unchanged dataset: the checkpoint's own segment start, so the position in the data is exact. A dataset
    that changed since the checkpoint (new files from an incremental prepare, scheduled retraining) starts a
    new segment here: the new data is read from its first sample in its (seed, epoch) order.
    """
    if trainer_state["dataset_fingerprint"] == manifest["dataset_fingerprint"]:
        return trainer_state.get("data_start_step", 0)
    log(f"the dataset changed since step {step} (fingerprint {trainer_state['dataset_fingerprint']} -> "
        f"{manifest['dataset_fingerprint']}): continuing from the checkpoint on the new data from its first sample")
    return step
