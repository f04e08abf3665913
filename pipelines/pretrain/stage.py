"""The pretrain stage on the driver: validate inputs, build the Ray Train TorchTrainer, run it, report.

Skeleton: parse config -> check the dataset and the model shape -> TorchTrainer (workers run
pipelines.pretrain.loop), or the same loop in this process (launcher local) -> result record (export URIs,
final metrics) for the next stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from electra_core import ElectraConfig, storage
from electra_core.tokenizer import TOKENIZER_FILE, load_tokenizer, special_token_ids
from pipelines.config import PretrainConfig, to_dict
from pipelines.divergence import clear_divergence, raise_if_diverged
from pipelines.errors import InputError, check_writable_directory
from pipelines.prepare.manifest import verified_dataset
from pipelines.pretrain.parallelism import effective_zero_stage
from pipelines.pretrain.checkpoint import drop_stale_ray_snapshot, list_checkpoints, prune_checkpoints, step_of


def with_absolute_local_paths(config: PretrainConfig) -> PretrainConfig:
    """Workers may run in another directory: local paths are made absolute on the driver."""
    return dataclasses.replace(config, data=storage.absolute(config.data), storage=storage.absolute(config.storage),
                               init_from=storage.absolute(config.init_from))


def run_uri(config: PretrainConfig) -> str:
    return storage.join(config.storage, config.name)


def resolve_model_config(config: PretrainConfig, manifest: dict) -> ElectraConfig:
    """The model's shape: the preset (or init_from's) fitted to the dataset's tokenizer and sequence length."""
    tokenizer = load_tokenizer(storage.join(config.data, TOKENIZER_FILE))
    vocabulary = special_token_ids(tokenizer)
    seq_len = manifest["seq_len"]
    try:
        if config.init_from:
            model_config = ElectraConfig.load(storage.join(config.init_from, "discriminator"))
            if model_config.vocab_size != vocabulary["vocab_size"]:
                raise InputError(f"{config.init_from}: vocab_size {model_config.vocab_size} does not match the "
                                 f"dataset's tokenizer ({vocabulary['vocab_size']}); prepare the data with that "
                                 "model's tokenizer (--tokenizer)")
            model_config = model_config.replace(objective=config.objective, **config.model)
            shape = config.init_from
        else:
            positions = max(seq_len, ElectraConfig.from_preset(config.preset).max_position_embeddings)
            model_config = ElectraConfig.from_preset(config.preset, objective=config.objective,
                                                     **{"max_position_embeddings": positions, **vocabulary,
                                                        **config.model})
            shape = "pretrain.model" if "max_position_embeddings" in config.model else f"preset {config.preset}"
    except FileNotFoundError as error:
        raise InputError(f"--init-from: {error}") from None
    except (TypeError, ValueError) as error:
        raise InputError(f"pretrain.model: {error}") from None
    if model_config.max_position_embeddings < seq_len:  # a worker would fail on its first batch, and be retried
        raise InputError(f"{config.data}: sequences of {seq_len} tokens do not fit the model's "
                         f"{model_config.max_position_embeddings} positions ({shape}); prepare the data with "
                         f"--seq-len {model_config.max_position_embeddings} or less")
    return model_config


def after_divergence(uri: str) -> str:
    """What running again does after a diverged run: the checkpoints hold only finite weights (a skipped step
    changes nothing), so resuming with a lower learning rate is sound."""
    newest = list_checkpoints(uri)
    if not newest:
        return "run the same command (it has no checkpoint and starts over)"
    return f"run the same command to resume from step {step_of(newest[0])}, or a new --name to start over"


def describe(config: PretrainConfig, where: str, uri: str) -> str:
    return (f"electra pretrain: {config.preset} ({config.objective}) {where}, global batch {config.global_batch_size} "
            f"= {config.micro_batch_size} x {config.workers} workers x {config.gradient_accumulation_steps} "
            f"accumulation, {config.max_steps} steps, ZeRO-{effective_zero_stage(config, config.workers)}, "
            f"{config.resolved_precision}{', compiled' if config.compile else ''} -> {uri}")


def train_on_ray(config: PretrainConfig, loop_config: dict, address: str | None, uri: str, log) -> None:
    from pipelines.ray_runtime import check_workers_fit, ensure_ray, fit, ray_storage

    ensure_ray(address)
    check_workers_fit(config.workers, config.cpus_per_worker, config.gpus_per_worker, "pretrain")
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.pretrain.loop import train_loop_per_worker

    storage_path, filesystem = ray_storage(config.storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpus_per_worker > 0,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": config.gpus_per_worker} if config.gpus_per_worker else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if config.gpus_per_worker else "gloo"),
        run_config=ray.train.RunConfig(
            name=config.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
    )
    log(describe(config, f"on {config.workers} workers", uri))
    clear_divergence(uri)
    fit(trainer)


def train_here(config: PretrainConfig, loop_config: dict, uri: str, log) -> int:
    """launcher local: this process is rank RANK of WORLD_SIZE (torchrun's environment; else 0 of 1). Returns the
    rank."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world_size != config.workers:
        raise InputError(f"pretrain.workers is {config.workers} but this launch has {world_size} process(es); "
                         f"start it with torchrun --nproc-per-node {config.workers}, or set --workers {world_size}")
    progress = logging.getLogger("pipelines")  # the loop reports through logging; Ray Train would forward it
    progress.setLevel(logging.INFO)
    if not (progress.handlers or logging.getLogger().handlers):
        progress.addHandler(logging.StreamHandler())
    from pipelines.pretrain.loop import train_in_this_process

    if rank == 0:
        log(describe(config, f"in {world_size} process{'es' if world_size > 1 else ''} without Ray", uri))
        clear_divergence(uri)
    train_in_this_process(loop_config)
    return rank


def run_pretrain(config: PretrainConfig, address: str | None = None, log=print) -> dict:
    """Runs (or resumes) the pretraining run STORAGE/NAME; returns its result record."""
    started = time.perf_counter()
    if config.launcher == "local" and os.environ.get("RANK", "0") != "0":
        log = lambda *_: None  # noqa: E731 (torchrun's other processes: rank 0 speaks for the run)
    config = with_absolute_local_paths(config)
    # auto is decided here, once, so that every worker trains in the same precision.
    config = dataclasses.replace(config, precision=config.resolved_precision)
    if not config.data:
        raise InputError("--data is required (an `electra prepare` output)")
    if not config.name:
        raise InputError("--name is required (the run's directory under --storage)")
    manifest = verified_dataset(config.data)
    model_config = resolve_model_config(config, manifest)
    uri = run_uri(config)
    check_writable_directory(uri, "the run's directory (--storage/--name)")
    existing = list_checkpoints(uri)
    drop_stale_ray_snapshot(uri, log=log)
    if existing:
        log(f"electra pretrain: {uri} has {len(existing)} checkpoints; resuming from the newest good one")

    loop_config = {"pretrain": to_dict(config), "model": to_dict(model_config), "run_uri": uri}
    if config.launcher == "local":
        rank = train_here(config, loop_config, uri, log)
    else:
        train_on_ray(config, loop_config, address, uri, log)
        rank = 0
    if rank != 0:  # torchrun's other processes: rank 0 reports
        return {"run": uri, "rank": rank}
    prune_checkpoints(uri, config.keep_checkpoints)
    raise_if_diverged(uri, "pretrain", f"Lower pretrain.lr (peak {config.peak_lr:g}) or lengthen "
                      f"pretrain.warmup_steps, then {after_divergence(uri)}")
    if config.stop_at_step is not None and config.stop_at_step < config.max_steps:
        log(f"electra pretrain: stopped at step {config.stop_at_step}; checkpoints in {uri}")
        return {"run": uri, "stopped_at": config.stop_at_step}
    result = json.loads(storage.read_text(storage.join(uri, "result.json")))
    final = result.get("final_metrics", {})
    log(f"electra pretrain: done in {time.perf_counter() - started:.0f} s; loss {final.get('loss', float('nan')):.4f}; "
        f"export {result['export']}; loss curve {result['loss_curve']}")
    if result.get("skipped_steps"):
        log(f"warning: {result['skipped_steps']} steps were skipped for a non-finite loss or gradient norm (see "
            f"skipped_steps in metrics.jsonl); the model took no update from them")
    check = result.get("discriminator_against_prior")
    if check is not None and check["at_prior"]:
        from pipelines.pretrain.metrics import prior_warning

        log(prior_warning(check))
    return result
