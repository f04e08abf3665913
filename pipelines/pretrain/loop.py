"""The training loop that runs on every Ray Train worker (or in plain processes, pretrain.launcher: local):
DeepSpeed around ElectraPretrainingModel.

Reads like a plain loop: set up -> restore -> for each step (micro-batches, optimizer step) -> log,
checkpoint, react to preemption notices -> export. Everything random is derived from (seed, step,
micro-batch), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import torch

from electra_core import ElectraConfig, ElectraPretrainingModel, storage
from electra_core.tokenizer import TOKENIZER_FILE, load_tokenizer, save_tokenizer
from pipelines.config import PretrainConfig, saved_dict
from pipelines.divergence import Diverged, NonFiniteGuard, record_divergence
from pipelines.secrets import redact_text
from pipelines.prepare.manifest import load_committed_dataset
from pipelines.pretrain import checkpoint as checkpoints
from pipelines.pretrain.checkpoint_manager import CheckpointManager
from pipelines.pretrain.sessions import ProcessSession, RayTrainSession
from pipelines.pretrain.data import RankBatches
from pipelines.pretrain.parallelism import (clips_in_loop, deepspeed_config, effective_zero_stage,
                                           on_every_rank_if_on_any, register_parameters_read_outside_their_modules,
                                           skip_shared_memory_all_reduce_build)
from pipelines.pretrain.metrics import (MetricsLog, MetricsWindow, discriminator_against_prior, peak_flops,
                                       training_flops_per_token)
from pipelines.pretrain.step import MicroBatchForward, gradient_norm, learning_rate, parameter_groups

# What a worker tells the user goes through logging: Ray Train sends a worker's log records to the terminal and to
# its worker log files. (A print came out twice under Train's print patch; see pipelines.ray_runtime.fit.)
logger = logging.getLogger(__name__)


@dataclass
class WorkerRun:
    """What one worker's run is: its configs, place in the group and in the data, and its logs. Checkpointing
    and export take this instead of a long argument list."""

    config: PretrainConfig
    loop_config: dict
    model_config: ElectraConfig
    run_uri: str
    rank: int
    world_size: int
    manifest: dict
    session: object
    """RayTrainSession or ProcessSession: commits checkpoints."""
    data_start: int = 0
    """The step at which the run began reading the current dataset (see data_segment_start)."""
    metrics: MetricsLog | None = None
    """Rank 0's metrics log; None on the other ranks."""
    sample_log: "_SampleLog | None" = None

    def trainer_state(self, step: int, optimizer_step: int) -> dict:
        return {
            "step": step, "data_start_step": self.data_start,
            "samples_consumed": (step - self.data_start) * self.config.global_batch_size,
            "optimizer_step": optimizer_step, "world_size": self.world_size,
            "pretrain_config": saved_dict(self.loop_config["pretrain"]), "model_config": self.loop_config["model"],
            "dataset_fingerprint": self.manifest["dataset_fingerprint"],
        }


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker."""
    train(loop_config, RayTrainSession())


def train_in_this_process(loop_config: dict) -> None:
    """`pretrain.launcher: local`: this process trains, alone or as one of torchrun's processes (no Ray)."""
    config = PretrainConfig(**loop_config["pretrain"])
    session = ProcessSession(loop_config["run_uri"], config.keep_checkpoints, use_gpu=config.gpus_per_worker > 0)
    try:
        train(loop_config, session)
    except BaseException:
        session.close()
        raise
    session.close(wait_for_every_rank=True)


def train(loop_config: dict, session) -> None:
    """The loop itself, the same under either session (pipelines.pretrain.sessions)."""
    import deepspeed

    config = PretrainConfig(**loop_config["pretrain"])
    model_config = ElectraConfig(**loop_config["model"])
    run_uri = loop_config["run_uri"]
    rank, world_size = session.rank, session.world_size
    log = logger.info if rank == 0 else (lambda *_: None)
    torch.set_num_threads(config.cpus_per_worker)
    device = torch.device("cuda", torch.cuda.current_device()) if config.gpus_per_worker else torch.device("cpu")
    end_step = config.stop_at_step or config.max_steps
    manifest = load_committed_dataset(config.data)
    data = RankBatches(config.data, manifest, model_config.pad_token_id, seed=config.seed,
                       shuffle_window=config.shuffle_window, global_batch=config.global_batch_size,
                       micro_batch=config.micro_batch_size, rank=rank, world_size=world_size)

    # --- model: resume from the newest good checkpoint, else init_from, else fresh ----------------------
    saves = CheckpointManager(run_uri, config.checkpoint_every, end_step, log=log)
    torch.manual_seed(config.seed)
    if config.init_from and saves.resumed is None:
        model = ElectraPretrainingModel.from_pretrained(config.init_from)
    else:
        model = ElectraPretrainingModel(model_config, _generator_config(config, model_config))
    saves.load_weights(model)
    model.to(device)
    # torch's fused AdamW: one kernel over every tensor (Small on 2 CPU threads: 9 ms a step against 35 ms for
    # the per-tensor default); ZeRO hands it its flat fp32 partitions, which it takes as well.
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.peak_lr,
                                  betas=(0.9, 0.999), eps=config.adam_epsilon, fused=True)
    if world_size == 1 and device.type == "cpu":
        skip_shared_memory_all_reduce_build()
    if effective_zero_stage(config, world_size) == 3:
        register_parameters_read_outside_their_modules(model)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=deepspeed_config(config, world_size))
    if config.compile:
        engine.compile(compile_kwargs={"dynamic": False})  # the step's shapes are fixed: one graph, no guards on them
    if world_size == 1:
        # One rank has nothing to average: skip DeepSpeed's flatten, all-reduce and copy-back of every gradient.
        engine.enable_backward_allreduce = False
    clip_here = clips_in_loop(config, world_size)
    start_step = saves.start_step
    data_start = saves.restore_optimizer(engine, manifest, world_size)

    metrics = MetricsLog(run_uri, config.name, start_step, config.tracking_uri, saved_dict(loop_config["pretrain"])) \
        if rank == 0 else None
    sample_log = _SampleLog(run_uri, start_step, config.record_sample_ids and rank == 0)
    run = WorkerRun(config, loop_config, model_config, run_uri, rank, world_size, manifest, session, data_start,
                    metrics, sample_log)
    flops_per_token = training_flops_per_token(model_config, manifest["seq_len"])
    peak = peak_flops()
    accumulation = config.gradient_accumulation_steps
    forward = MicroBatchForward(engine, engine.module, config.seed, device)
    window = MetricsWindow()
    guard = NonFiniteGuard(config.max_nonfinite_steps, device)
    grad_norm = None
    diverged = None

    # --- training ----------------------------------------------------------------------------------------
    data.start(range(start_step, end_step), accumulation, config.prefetch, data_start,
               pin_memory=device.type == "cuda")
    for step in range(start_step, end_step):
        logging_step = (step + 1) % config.log_every == 0 or step + 1 == end_step
        lr = learning_rate(config, step, data_start)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        if config.record_sample_ids and rank == 0:
            sample_log.add(step, data.step_sample_ids(step))
        for micro in range(accumulation):
            batch, waited = data.get(step, micro)
            window.data_wait += waited
            output, batch = forward(batch, step, index=micro * world_size + rank)
            engine.backward(output.loss)
            boundary = micro == accumulation - 1  # gradients complete (and averaged across ranks)
            if clip_here and boundary:
                grad_norm = gradient_norm(engine.module.parameters(), config.grad_clip)
                guard.skip_if_nonfinite(engine.optimizer, grad_norm)
            engine.step()
            if boundary and not clip_here:
                guard.count_skipped(not engine.was_step_applied())
            window.add(output, batch["attention_mask"])

        done = step + 1
        preempted = False
        if logging_step:
            norm = grad_norm if clip_here else engine.get_global_grad_norm()  # before clipping, either way
            record = window.record(done, lr, None if norm is None else float(norm), world_size, flops_per_token, peak,
                                   data.epoch(done))
            record["skipped_steps"], gave_up = guard.read()
            if metrics is not None:
                metrics.log(record)
            if on_every_rank_if_on_any(gave_up, world_size):
                diverged = Diverged(done, guard.limit)
                break
            preempted = on_every_rank_if_on_any(session.preemption_notice(), world_size)
        # throughput figures count training only; the stall is logged apart
        window.started += saves.after_step(engine, run, done, preempted, window.last_record)

    data.close()

    # --- export ------------------------------------------------------------------------------------------
    if diverged is not None:
        if metrics is not None:  # the records show where it went wrong: kept, and drawn
            metrics.flush()
            metrics.plot(storage.join(run_uri, "loss_curve.png"))
        if rank == 0:
            record_divergence(run_uri, diverged, lr=lr)
        log(f"stopped at step {done}: {diverged}; nothing exported")
    elif end_step == config.max_steps:
        export(engine, run)
    else:
        log(f"stopped at step {end_step} as asked; run the same command without stop_at_step to continue")
    if metrics is not None:
        metrics.close()


def _generator_config(config: PretrainConfig, model_config: ElectraConfig) -> ElectraConfig | None:
    """A run continued from init_from keeps that generator's shape (it may not follow the size fraction)."""
    if not config.init_from:
        return None
    return ElectraConfig.load(storage.join(config.init_from, "generator"))


class _SampleLog:
    """ids of the samples of every step, written next to the checkpoints (opt-in)."""

    def __init__(self, run_uri: str, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.uri = storage.join(run_uri, "samples.jsonl")
        self.lines: list[str] = []
        if enabled:
            try:
                existing = storage.read_text(self.uri).splitlines()
            except FileNotFoundError:
                existing = []
            self.lines = [line for line in existing if line and json.loads(line)["step"] < resume_step]

    def add(self, step: int, ids: np.ndarray) -> None:
        self.lines.append(json.dumps({"step": step, "ids": ids.tolist()}))

    def flush(self) -> None:
        if self.enabled:
            storage.write_text(self.uri, "\n".join(self.lines) + "\n")


def export(engine, run: WorkerRun) -> None:
    """Hugging Face directories (discriminator/ and generator/ with tokenizer files) and result.json."""
    params = checkpoints.gather_full_params(engine, keep=run.rank == 0)  # weights only: no moments
    if run.rank != 0:
        return
    config, manifest, metrics, run_uri = run.config, run.manifest, run.metrics, run.run_uri
    model = ElectraPretrainingModel(run.model_config, engine.module.generator.config)
    checkpoints.load_module_weights(model, params)
    export_uri = storage.join(run_uri, "export")
    model.save_pretrained(export_uri)
    tokenizer = load_tokenizer(storage.join(config.data, TOKENIZER_FILE))
    parts = ["generator"] if model.discriminator is None else ["discriminator", "generator"]
    for part in parts:
        save_tokenizer(tokenizer, storage.join(export_uri, part), model_max_length=manifest["seq_len"])
    plot_uri = storage.join(run_uri, "loss_curve.png")
    final, prior_check = {}, None
    if metrics is not None:
        metrics.flush()
        metrics.plot(plot_uri)
        final = metrics.records[-1] if metrics.records else {}
        prior_check = discriminator_against_prior(metrics.records)
    result = {
        "run": run_uri,
        "export": {part: storage.join(export_uri, part) for part in parts},
        "steps": config.max_steps,
        "objective": config.objective,
        "dataset": redact_text(config.data),
        "dataset_fingerprint": manifest["dataset_fingerprint"],
        "data_start_step": run.data_start,
        "final_metrics": final,
        "discriminator_against_prior": prior_check,
        "skipped_steps": sum(r.get("skipped_steps", 0) for r in metrics.records) if metrics is not None else 0,
        "loss_curve": plot_uri,
        "metrics": storage.join(run_uri, "metrics.jsonl"),
    }
    storage.write_text(storage.join(run_uri, "result.json"), json.dumps(result, indent=2) + "\n")
