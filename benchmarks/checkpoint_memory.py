"""Host memory per rank while a checkpoint is taken and restored: sharded (each rank gathers and writes its own
share of the parameters; a restore reads one tensor at a time from local copies) against the full state on
every rank (what the pipeline did before: every rank gathered all weights and both Adam moments, and a restore
read the whole checkpoint into memory on every rank).

Two CPU ranks over gloo, DeepSpeed ZeRO-2 in fp32, one training step first so the optimizer has its state; the
model is the Base preset by default (110M parameters: 1.3 GB of fp32 weights and moments). The figure is the
peak resident memory of each rank above what it held before, sampled every 5 ms; each phase runs in fresh
processes.

    python benchmarks/checkpoint_memory.py [--preset base] [--ranks 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class PeakRss:
    """The peak resident memory of this process while the block runs, above its level at the start (MB)."""

    def __enter__(self):
        import psutil

        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *_):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.growth_mb = (self.peak - self.start) / 2**20
        return False


PHASES = ("save, full state on every rank", "save, sharded", "restore, whole checkpoint in memory",
          "restore, one tensor at a time")


def rank_main(rank: int, world_size: int, port: int, preset: str, work: str, phase: str, results) -> None:
    """One phase in fresh processes: memory that an earlier phase freed but the allocator kept would otherwise
    be reused and hide the next phase's growth."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from safetensors.torch import load as load_safetensors

    from electra_core import ElectraConfig, ElectraPretrainingModel
    from pipelines.pretrain import checkpoint as checkpoints

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    config = ElectraConfig.from_preset(preset)
    model = ElectraPretrainingModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config={
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2},
        "steps_per_print": 10**9})
    input_ids = torch.randint(5, config.vocab_size, (1, 128))
    engine.backward(engine(input_ids=input_ids, rng=torch.Generator().manual_seed(rank)).loss)
    engine.step()
    checkpoint_dir = os.path.join(work, "checkpoint")

    if phase == PHASES[0]:  # every rank holds everything (the former gather_full_state)
        with PeakRss() as peak:
            state = checkpoints.gather_state_shard(engine, 0, 1)
    elif phase == PHASES[1]:
        with PeakRss() as peak:
            params, moments, step = checkpoints.gather_state_shard(engine, rank, world_size)
            listing = checkpoints.write_shard(checkpoint_dir, rank, world_size, params, moments)
            del params, moments
        listings = [None] * world_size
        dist.all_gather_object(listings, listing)
        if rank == 0:  # the checkpoint the restore phases read
            checkpoints.write_marker(checkpoint_dir, {"step": 1, "optimizer_step": step}, listings)
    elif phase == PHASES[2]:  # the former read_verified: every file in memory, then every tensor
        with PeakRss() as peak:
            contents = {name: Path(checkpoint_dir, name).read_bytes() for name in os.listdir(checkpoint_dir)
                        if name.endswith(".safetensors")}
            state = {key: value for data in contents.values() for key, value in load_safetensors(data).items()}
    else:
        with PeakRss() as peak:
            loaded = checkpoints.read_verified(checkpoint_dir)
            checkpoints.restore_optimizer_state(engine, loaded)
            loaded.close()
    results[(phase, rank)] = peak.growth_mb
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()

    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    with tempfile.TemporaryDirectory() as work:
        for phase in PHASES:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            mp.spawn(rank_main, args=(args.ranks, port, args.preset, work, phase, results), nprocs=args.ranks,
                     join=True)
    from electra_core import ElectraConfig, ElectraPretrainingModel

    parameters = sum(p.numel() for p in ElectraPretrainingModel(ElectraConfig.from_preset(args.preset)).parameters())
    print(f"ELECTRA-{args.preset} ({parameters / 1e6:.0f}M parameters; fp32 weights + 2 Adam moments = "
          f"{parameters * 12 / 2**20:,.0f} MB), {args.ranks} CPU ranks, ZeRO-2 fp32: peak host memory above the "
          "level before, per rank (MB)")
    print(f"{'':40}" + "".join(f"{'rank ' + str(r):>10}" for r in range(args.ranks)))
    for phase in PHASES:
        print(f"{phase:40}" + "".join(f"{results[(phase, r)]:>10,.0f}" for r in range(args.ranks)))


if __name__ == "__main__":
    main()
