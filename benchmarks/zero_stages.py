"""Which ZeRO stage to run by default: step time and memory of every stage the config accepts, per preset.

Each (preset, precision, stage) runs in fresh ranks over gloo with the pipeline's own DeepSpeed config
(pipelines.pretrain.parallelism.deepspeed_config) and its own forward (pipelines.pretrain.step), on random
tokens: a few warm-up steps, then the median step time over the timed steps, and each rank's peak resident
memory above its level before DeepSpeed's init (model, optimizer state and the steps).

These are CPU ranks, one thread each, so communication here is gloo over shared memory and the step is compute
bound: the figures rank the stages by the copies and collectives each adds, not by what NCCL would cost
between GPUs. The baseline is stage 0 (plain data parallel, torch's clipping).

    python benchmarks/zero_stages.py [--presets tiny mini small] [--precisions fp32 bf16] [--ranks 2]
                                     [--batch 8] [--seq-len 128] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoint_memory import PeakRss  # noqa: E402


def rank_main(rank: int, world_size: int, port: int, args, preset: str, precision: str, stage: int,
              results) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from electra_core import ElectraConfig, ElectraPretrainingModel
    from pipelines.config import PretrainConfig
    from pipelines.pretrain.parallelism import (clips_in_loop, deepspeed_config, effective_zero_stage,
                                               register_parameters_read_outside_their_modules)
    from pipelines.pretrain.step import MicroBatchForward, gradient_norm, parameter_groups

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    config = PretrainConfig(data="unused", name="zero", preset=preset, zero_stage=stage, precision=precision,
                            micro_batch_size=args.batch, global_batch_size=args.batch * world_size)
    torch.manual_seed(0)
    model_config = ElectraConfig.from_preset(preset)
    with PeakRss() as peak:
        model = ElectraPretrainingModel(model_config)
        optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4, fused=True)
        if effective_zero_stage(config, world_size) == 3:
            register_parameters_read_outside_their_modules(model)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                          config=deepspeed_config(config, world_size))
        forward = MicroBatchForward(engine, engine.module, seed=0, device=torch.device("cpu"))
        input_ids = torch.randint(5, model_config.vocab_size, (args.batch, args.seq_len))
        batch = {"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids),
                 "attention_mask": torch.ones_like(input_ids)}
        clip_here = clips_in_loop(config, world_size)
        times = []
        for step in range(args.warmup + args.steps):
            started = time.perf_counter()
            output, _ = forward(batch, step, index=rank)
            engine.backward(output.loss)
            if clip_here:
                gradient_norm(engine.module.parameters(), config.grad_clip)
            engine.step()
            dist.barrier()
            times.append(time.perf_counter() - started)
    results[(preset, precision, stage, rank)] = (statistics.median(times[args.warmup:]), peak.growth_mb)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "mini", "small"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import torch.multiprocessing as mp

    from pipelines.config import PretrainConfig
    from pipelines.pretrain.parallelism import effective_zero_stage

    results = mp.Manager().dict()
    print(f"{args.ranks} CPU ranks (gloo, 1 thread each), micro-batch {args.batch} x {args.seq_len} per rank; "
          "median step time and peak memory per rank above the level before init")
    print(f"{'preset':8}{'precision':>10}{'asked':>7}{'runs':>7}{'step s':>9}{'x stage 0':>11}{'MB/rank':>10}")
    for preset in args.presets:
        for precision in args.precisions:
            baseline = None
            for stage in args.stages:
                runs = effective_zero_stage(PretrainConfig(data="unused", name="zero", zero_stage=stage,
                                                           precision=precision), args.ranks)
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    port = probe.getsockname()[1]
                mp.spawn(rank_main, args=(args.ranks, port, args, preset, precision, stage, results),
                         nprocs=args.ranks, join=True)
                seconds = max(results[(preset, precision, stage, r)][0] for r in range(args.ranks))
                memory = max(results[(preset, precision, stage, r)][1] for r in range(args.ranks))
                baseline = baseline or seconds
                print(f"{preset:8}{precision:>10}{stage:>7}{runs:>7}{seconds:>9.3f}{baseline / seconds:>11.2f}"
                      f"{memory:>10,.0f}", flush=True)


if __name__ == "__main__":
    main()
