"""The training loop that runs on every Ray Train worker (or in plain processes, pretrain.launcher: local):
DeepSpeed around ElectraPretrainingModel.

Reads like a plain loop: set up -> restore -> for each step (micro-batches, optimizer step) -> log,
checkpoint, react to preemption notices -> export. Everything random is derived from (seed, step,
micro-batch), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from electra_core import ElectraConfig, ElectraPretrainingModel, storage
from electra_core.modeling import takes_weight_decay
from electra_core.tokenizer import TOKENIZER_FILE, load_tokenizer, save_tokenizer
from pipelines.config import PretrainConfig, saved_dict
from pipelines.divergence import Diverged, NonFiniteGuard, record_divergence
from pipelines.secrets import redact_text
from pipelines.prepare.manifest import load_committed_dataset
from pipelines.pretrain import checkpoint as checkpoints
from pipelines.pretrain.sessions import ProcessSession, RayTrainSession
from pipelines.pretrain.data import BatchPrefetcher, DirectBatches, NodeShardCache, SampleOrder, ShardReader
from pipelines.pretrain.parallelism import (clips_in_loop, deepspeed_config, effective_zero_stage,
                                           register_parameters_read_outside_their_modules,
                                           skip_shared_memory_all_reduce_build)
from pipelines.pretrain.metrics import (MetricsLog, discriminator_against_prior, peak_flops, prior_loss,
                                       training_flops_per_token)

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


def derived_seed(*parts) -> int:
    """A 63-bit seed from any values: stable across processes and machines (unlike hash())."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def learning_rate(config: PretrainConfig, step: int, segment_start: int = 0) -> float:
    """Linear warmup to the peak, then linear decay to zero at max_steps (step counts from 0).

    A run continued on new data (scheduled retraining) starts a segment at `segment_start`: the schedule
    warms up again over the segment's own steps and decays to zero at its end, the same shape as a fresh run.
    """
    length = config.max_steps - segment_start
    warmup = config.warmup_steps if config.warmup_steps is not None else min(10_000, length // 10)
    local = step - segment_start
    if local < warmup:
        return config.peak_lr * (local + 1) / warmup
    return config.peak_lr * max(0.0, (length - local) / max(1, length - warmup))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, not on biases and LayerNorm weights (as ELECTRA and BERT)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if takes_weight_decay(name) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker."""
    train(loop_config, RayTrainSession())


def train_in_this_process(loop_config: dict) -> None:
    """`pretrain.launcher: local`: this process trains, alone or as one of torchrun's processes (no Ray)."""
    config = PretrainConfig(**loop_config["pretrain"])
    session = ProcessSession(loop_config["run_uri"], config.keep_checkpoints, use_gpu=config.gpus_per_worker > 0)
    try:
        train(loop_config, session)
    finally:
        session.close()


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

    # --- data: the committed dataset and its deterministic order ----------------------------------------
    manifest = load_committed_dataset(config.data)
    order = SampleOrder([s["rows"] for s in manifest["shards"]], config.seed, config.shuffle_window)
    # A shuffle window reads its shards interleaved, and read-ahead may reach into the next window: two windows.
    # On object storage, a node's ranks share one download of each shard (a few windows kept on local disk).
    node_cache = NodeShardCache.for_dataset(config.data, manifest["dataset_fingerprint"], 4 * config.shuffle_window)
    reader = ShardReader(config.data, manifest["shards"], manifest["seq_len"], model_config.pad_token_id,
                         cache_shards=2 * config.shuffle_window, node_cache=node_cache)

    # --- model: resume from the newest good checkpoint, else init_from, else fresh ----------------------
    resumed = checkpoints.latest_good_checkpoint(run_uri, log=log)
    torch.manual_seed(config.seed)
    if config.init_from and resumed is None:
        model = ElectraPretrainingModel.from_pretrained(config.init_from)
    else:
        model = ElectraPretrainingModel(model_config, _generator_config(config, model_config))
    if resumed is not None:
        checkpoints.load_module_weights(model, resumed)
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
    start_step, data_start = 0, 0
    if resumed is not None:
        checkpoints.restore_optimizer_state(engine, resumed)
        start_step = resumed.step
        data_start = data_segment_start(resumed.trainer_state, resumed.step, manifest, log)
        log(f"resumed from {resumed.uri} at step {start_step} (written by {resumed.trainer_state['world_size']} "
            f"workers; now {world_size})")
        resumed.close()  # its local copies
    del resumed

    metrics = MetricsLog(run_uri, config.name, start_step, config.tracking_uri, saved_dict(loop_config["pretrain"])) \
        if rank == 0 else None
    sample_log = _SampleLog(run_uri, start_step, config.record_sample_ids and rank == 0)
    run = WorkerRun(config, loop_config, model_config, run_uri, rank, world_size, manifest, session, data_start,
                    metrics, sample_log)
    flops_per_token = training_flops_per_token(model_config, manifest["seq_len"])
    peak = peak_flops()
    accumulation = config.gradient_accumulation_steps
    generator = torch.Generator(device=device)
    window = _Window()
    guard = NonFiniteGuard(config.max_nonfinite_steps, device)
    preemption_saved = False
    grad_norm = None
    diverged = None

    # --- training ----------------------------------------------------------------------------------------
    end_step = config.stop_at_step or config.max_steps

    def position(step: int) -> int:
        return (step - data_start) * config.global_batch_size  # samples of this dataset consumed before `step`

    def read_micro_batch(step: int, micro: int) -> dict[str, np.ndarray]:
        start = position(step) + (micro * world_size + rank) * config.micro_batch_size  # this rank's slice
        return reader.batch(order, order.sample_ids(start, config.micro_batch_size))

    batches = BatchPrefetcher(read_micro_batch, range(start_step, end_step), accumulation, config.prefetch,
                              pin_memory=device.type == "cuda") if config.prefetch else DirectBatches(read_micro_batch)
    for step in range(start_step, end_step):
        logging_step = (step + 1) % config.log_every == 0 or step + 1 == end_step
        lr = learning_rate(config, step, data_start)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        if config.record_sample_ids and rank == 0:
            sample_log.add(step, order.sample_ids(position(step), config.global_batch_size))
        for micro in range(accumulation):
            index = micro * world_size + rank  # this micro-batch's place in the global batch
            batch, waited = batches.get(step, micro)
            window.data_wait += waited
            padded = bool(batch["attention_mask"].min() == 0)  # decided on the host copy: no device sync
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            seed = derived_seed(config.seed, step, index)
            torch.manual_seed(seed)  # dropout
            generator.manual_seed(seed ^ 0x5DEECE66D)  # masking and sampling, drawn outside the (compiled) model
            noise = engine.module.masking_noise(batch["input_ids"], generator)
            output = engine(**batch, noise=noise, padded=padded)
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
        if logging_step:
            norm = grad_norm if clip_here else engine.get_global_grad_norm()  # before clipping, either way
            record = window.record(done, lr, None if norm is None else float(norm), world_size, flops_per_token, peak,
                                   (done - data_start) * config.global_batch_size / order.num_samples)
            record["skipped_steps"], gave_up = guard.read()
            if metrics is not None:
                metrics.log(record)
            if on_every_rank_if_on_any(gave_up, world_size):
                diverged = Diverged(done, guard.limit)
                break
            preempted = on_every_rank_if_on_any(session.preemption_notice(), world_size)
            if preempted and not preemption_saved and done % config.checkpoint_every:
                log(f"preemption notice: saving a checkpoint at step {done} before the node goes")
                window.started += save_checkpoint(engine, run, done, record)
                preemption_saved = True
        if done % config.checkpoint_every == 0 or done == end_step:
            blocked = save_checkpoint(engine, run, done, window.last_record)
            window.started += blocked  # throughput figures count training only; the stall is logged apart

    batches.close()

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


def gradient_norm(parameters, max_norm: float) -> torch.Tensor:
    """The global gradient norm (before clipping), clipping to max_norm when it is positive: 0 means no
    clipping, as in DeepSpeed's gradient_clipping (torch's clip to 0 would zero every gradient)."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])


def collective_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def on_every_rank_if_on_any(flag: bool, world_size: int) -> bool:
    """True on every rank when true on any. Ray fans a preemption notice out to each worker separately, so
    ranks can see it a step apart; a checkpoint is a collective, and all ranks must start it at the same step."""
    if world_size == 1 or not dist.is_initialized():
        return flag
    seen = torch.tensor([int(flag)], dtype=torch.int32, device=collective_device())
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return bool(seen.item())


def _generator_config(config: PretrainConfig, model_config: ElectraConfig) -> ElectraConfig | None:
    """A run continued from init_from keeps that generator's shape (it may not follow the size fraction)."""
    if not config.init_from:
        return None
    return ElectraConfig.load(storage.join(config.init_from, "generator"))


class _Window:
    """Sums of the statistics since the last log line (rank 0's micro-batches; tokens over all ranks)."""

    def __init__(self) -> None:
        self.reset()
        self.last_record: dict = {}

    def reset(self) -> None:
        self.names: tuple[str, ...] = ()
        self.sums: torch.Tensor | None = None
        self.tokens: torch.Tensor | int = 0
        self.micro_batches = 0
        self.finite_micro_batches: torch.Tensor | int = 0
        self.samples = 0
        self.data_wait = 0.0  # seconds the training thread waited for its batches
        self.started = time.perf_counter()

    def add(self, output, attention_mask: torch.Tensor) -> None:
        # Summed on the device and read once per log line: no host sync in the training step.
        # A micro-batch whose loss was inf or NaN (its step is skipped) is left out of the averages.
        self.names, values = output.statistics()
        finite = torch.isfinite(values).all()
        values = torch.where(finite, values, torch.zeros_like(values))
        self.sums = values if self.sums is None else self.sums + values
        self.finite_micro_batches = self.finite_micro_batches + finite.long()
        self.tokens = self.tokens + attention_mask.sum()
        self.micro_batches += 1
        self.samples += attention_mask.shape[0]

    def record(self, step: int, lr: float, grad_norm: float | None, world_size: int, flops_per_token: float,
               peak: float | None, epoch: float) -> dict:
        elapsed = time.perf_counter() - self.started
        totals = torch.tensor([float(self.tokens), self.samples], dtype=torch.float64)
        if dist.is_initialized() and world_size > 1:
            totals = totals.to(collective_device())
            dist.all_reduce(totals)
        tokens, samples = totals.cpu().tolist()
        record = {
            "step": step,
            **dict(zip(self.names, (self.sums / self.finite_micro_batches).tolist())),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": samples / elapsed,
            "epoch": epoch,
            "data_wait_s": self.data_wait,
        }
        if "replaced_fraction" in record:
            record["discriminator_prior_loss"] = prior_loss(record["replaced_fraction"])
        if peak:
            record["mfu"] = tokens / elapsed * flops_per_token / (peak * world_size)
        self.last_record = record
        self.reset()
        return record


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


def save_checkpoint(engine, run: WorkerRun, step: int, record: dict) -> float:
    """Every rank gathers and writes its own shard locally, rank 0 adds the marker listing all of them, and the
    session commits each rank's directory (Ray Train uploads them in the background, into one checkpoint).
    Returns the seconds training was blocked."""
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
        logger.info(f"checkpoint at step {step}: training blocked {blocked:.2f} s{upload}")
        if run.metrics is not None:
            run.metrics.note(step, checkpoint_blocked_s=blocked)
    return blocked


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
