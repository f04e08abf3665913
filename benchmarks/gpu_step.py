"""ELECTRA pretraining steps on one GPU: samples/s, tokens/s and MFU (needs only torch + electra_core).

The forward is the pipeline's own (pipelines.pretrain.step.MicroBatchForward, as the trainer calls it): seeds and
masking draws made before the model, the padding decision from the host copy of the batch, which is copied to
the device each step from pinned memory, so that the compiled step is one graph (fullgraph=True). Mixed precision here is bf16 autocast
over fp32 weights with fused AdamW and gradient clipping (the GPU machine has no DeepSpeed, whose bf16 mode the
pipeline uses); SDPA (flash) attention; packed sequences without padding, as `electra prepare` writes them.

    PYTHONPATH=. python benchmarks/gpu_step.py [--preset base] [--batch 256] [--seq-len 128] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch

from electra_core import ElectraConfig, ElectraPretrainingModel
from pipelines.pretrain.metrics import PEAK_BF16_FLOPS, training_flops_per_token
from pipelines.pretrain.step import MicroBatchForward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a smoke run of this script (the tests run it so; no figures worth reading)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    config = ElectraConfig.from_preset(args.preset)
    model = ElectraPretrainingModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                                  fused=True)
    compiled = torch.compile(model, fullgraph=True, dynamic=False) if args.compile else model
    forward = MicroBatchForward(compiled, model, seed=0, device=device)
    input_ids = torch.randint(5, config.vocab_size, (args.batch, args.seq_len))
    input_ids[:, 0], input_ids[:, -1] = config.cls_token_id, config.sep_token_id
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, args.seq_len // 2:] = 1
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": torch.ones_like(input_ids)}
    if on_gpu:
        batch = {key: value.pin_memory() for key, value in batch.items()}  # as the trainer's prefetcher hands them
    steps_done = 0

    def step() -> None:
        nonlocal steps_done
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(batch, steps_done, index=0)[0].loss
        steps_done += 1
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    compile_started = time.perf_counter()
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    for _ in range(args.warmup):
        step()
    synchronize()
    warmup_s = time.perf_counter() - compile_started
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    seconds = time.perf_counter() - started

    samples_per_s = args.batch * args.steps / seconds
    tokens_per_s = samples_per_s * args.seq_len
    name = torch.cuda.get_device_name() if on_gpu else "CPU"
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    mfu = tokens_per_s * training_flops_per_token(config, args.seq_len) / peak if peak else float("nan")
    print(f"{name}: ELECTRA-{args.preset}, batch {args.batch} x {args.seq_len}, bf16, "
          f"{'compiled' if args.compile else 'eager'} (warm-up {warmup_s:.0f} s)")
    memory = f"   peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if on_gpu else ""
    print(f"  {samples_per_s:,.0f} samples/s   {tokens_per_s:,.0f} tokens/s   MFU {mfu:.1%}{memory}")
    print("  reference: NVIDIA's ELECTRA-Base, 955 sequences/s on one A100; target on one H200: 3,000 samples/s")


if __name__ == "__main__":
    main()
