"""How the model is spread over the workers: the DeepSpeed config (ZeRO stage, precision, clipping,
communication) and what DeepSpeed must be told about the model.

The same policy runs on GPUs (NCCL) and on CPU workers (gloo, DeepSpeed's CPU accelerator), so every stage and
precision that a GPU cluster uses is exercised by the tests here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pipelines.config import PretrainConfig


def effective_zero_stage(config: PretrainConfig, world_size: int) -> int:
    """The stage DeepSpeed runs. ZeRO shards state across data-parallel ranks; on one rank it has nothing to
    shard and only adds copies (measured: 0.80 of a plain loop's speed at stage 2 against 0.95 at stage 0 on one
    CPU worker), so one rank runs stage 0. In bf16, stage 0 would be DeepSpeed's DDP_BFLOAT16: bf16 gradients
    and an optimizer stepping bf16 weights, with no fp32 master copy; stage 1 is its BF16 optimizer (fp32
    masters, moments and gradient accumulation, sharded over the ranks), so bf16 runs at least stage 1.

    Unset, the stage is the fastest that benchmarks/zero_stages.py measured on 2 CPU ranks for the presets tiny
    to Base: stage 0 in fp32, stage 1 in mixed precision. Stage 3 was 8-66% slower everywhere, stage 2 up to 22%
    slower from mini up (within the noise at tiny). (On GPUs,
    ZeRO-1's reduce-scatter and all-gather move the bytes of plain data parallelism's all-reduce, and Base's
    fp32 master weights and moments, 1.3 GB, fit any data-center GPU whole.)"""
    mixed = config.resolved_precision in ("bf16", "fp16")
    asked = config.zero_stage if config.zero_stage is not None else int(mixed)
    stage = asked if world_size > 1 else 0
    return max(stage, 1) if config.resolved_precision == "bf16" else stage


def clips_in_loop(config: PretrainConfig, world_size: int) -> bool:
    """Plain fp32 data parallelism (stage 0): the loop clips with torch's fused clip_grad_norm_, which also
    gives the gradient norm; DeepSpeed's own clipping there reads every parameter's norm to the host one at a
    time and reports no norm. ZeRO and mixed precision keep DeepSpeed's clipping (gradients are partitioned
    or kept in its own buffers)."""
    return effective_zero_stage(config, world_size) == 0 and config.resolved_precision == "fp32"


def deepspeed_config(config: PretrainConfig, world_size: int) -> dict:
    """DeepSpeed's own mixed precision on GPUs and CPUs alike: bf16 (or fp16) weights and activations, fp32
    master weights and Adam moments in its optimizer. Under bf16, gradients are accumulated over micro-batches
    and reduced across ranks in fp32: bf16's 8-bit mantissa would round away a small rank's or a late
    micro-batch's share of a summed gradient. (fp16 keeps DeepSpeed's loss-scaled fp16 path.)"""
    precision = config.resolved_precision
    stage = effective_zero_stage(config, world_size)
    settings = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_clipping": 0.0 if clips_in_loop(config, world_size) else config.grad_clip,
        "zero_optimization": zero_settings(config, stage),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        settings["communication_data_type"] = "fp32"
        settings["data_types"] = {"grad_accum_dtype": "fp32"}
    return settings


def zero_settings(config: PretrainConfig, stage: int) -> dict:
    """On GPUs, gradient reduction overlaps the backward pass (it runs on its own CUDA stream, in buckets of
    DeepSpeed's default 5e8 elements, about 1 GB of bf16, so a Base model's 110M gradients go in one or two
    buckets). CPU workers have no streams to overlap on; DeepSpeed would only add copies there."""
    settings: dict = {"stage": stage}
    if stage >= 1 and config.gpus_per_worker:
        settings.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=500_000_000)
        if stage == 3:
            settings.update(stage3_prefetch_bucket_size=50_000_000)
    return settings


def skip_shared_memory_all_reduce_build() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce op (deepspeed_shm_comm) at its first init:
    about 3 minutes on 2 cores, again in every new environment (the build is keyed by the install path, so a
    fresh clone's venv rebuilds it). A single rank has nothing to all-reduce; marked incompatible, the op is
    not built and DeepSpeed's communication falls back to torch.distributed (gloo)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def register_parameters_read_outside_their_modules(model: torch.nn.Module) -> int:
    """ZeRO-3 gathers a module's partitioned parameters when that module's forward runs. A module that reads
    another module's parameters directly (the fused query/key/value matmul reads three Linear layers whose own
    forward never runs) declares them with `parameters_read_outside_their_modules()`; they are registered as
    its external parameters, DeepSpeed's public way to have them gathered for it. Returns how many."""
    import deepspeed

    count = 0
    for module in model.modules():
        for parameter in getattr(module, "parameters_read_outside_their_modules", lambda: ())():
            deepspeed.zero.register_external_parameter(module, parameter)
            count += 1
    return count


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
