"""One full ELECTRA pretraining step, ours (eager and torch.compile'd) against one built from transformers classes.

The transformers step is the way public PyTorch reimplementations train ELECTRA: ElectraForMaskedLM as the
generator and ElectraForPreTraining as the discriminator, sharing the embedding module, the generator's
output embedding tied to it, generator logits over every position, then sampling at the masked positions.
Both use the same config, masking functions, batch, thread count, AdamW and gradient clipping; each runs
in its own process so that peak memory is its own. Ours runs as the pipeline's loop calls it: masking draws
made up front and the padding decision taken on the host, so `ours-compiled` is one graph (inductor); its
compilation is timed apart and not counted in the step.

    python benchmarks/model_step.py [--preset small] [--batch 16] [--seq-len 128] [--steps 10] [--threads N]
                                    [--variants transformers,ours,ours-compiled]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from electra_core import ElectraConfig, ElectraPretrainingModel, masking


def build_ours(config: ElectraConfig, compiled: bool = False):
    model = ElectraPretrainingModel(config).train()
    forward = torch.compile(model, fullgraph=True, dynamic=False) if compiled else model

    def step(input_ids, attention_mask, rng):
        noise = model.masking_noise(input_ids, rng)
        return forward(input_ids=input_ids, attention_mask=attention_mask, noise=noise, padded=False).loss

    return model, step


def build_transformers(config: ElectraConfig):
    import transformers

    generator = transformers.ElectraForMaskedLM(transformers.ElectraConfig(**config.generator_config().to_hf_dict()))
    discriminator = transformers.ElectraForPreTraining(transformers.ElectraConfig(**config.to_hf_dict()))
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
    model = torch.nn.ModuleDict({"generator": generator, "discriminator": discriminator}).train()

    def step(input_ids, attention_mask, rng):
        slots = masking.select_slots(input_ids, attention_mask, config.special_token_ids, config.mask_prob,
                                     masking.max_predictions_per_seq(input_ids.shape[1], config.mask_prob), rng)
        generator_input = masking.corrupt_slots(input_ids, slots, config.mask_token_id, config.mask_token_share, rng)
        selected = slots.selected(input_ids.shape[1])
        labels = masking.mlm_labels(input_ids, selected)
        generated = generator(input_ids=generator_input, attention_mask=attention_mask, labels=labels)
        with torch.no_grad():
            sampled = masking.sample_tokens(generated.logits[selected], config.sampling_temperature, rng)
            discriminator_input = input_ids.clone()
            discriminator_input[selected] = sampled
            is_replaced = (discriminator_input != input_ids).long()
        judged = discriminator(input_ids=discriminator_input, attention_mask=attention_mask, labels=is_replaced)
        return generated.loss + config.disc_loss_weight * judged.loss

    return model, step


VARIANTS = ("transformers", "ours", "ours-compiled")


def run_one(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ElectraConfig.from_preset(args.preset)
    if args.impl == "transformers":
        model, step = build_transformers(config)
    else:
        model, step = build_ours(config, compiled=args.impl == "ours-compiled")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                                  fused=True)  # as the pipeline trains
    data_rng = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, config.vocab_size, (args.batch, args.seq_len), generator=data_rng)
    input_ids[:, 0], input_ids[:, -1] = config.cls_token_id, config.sep_token_id
    attention_mask = torch.ones_like(input_ids)
    rng = torch.Generator().manual_seed(2)

    def train_step():
        loss = step(input_ids, attention_mask, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    warmup_started = time.perf_counter()
    for _ in range(args.warmup):
        train_step()
    warmup_s = time.perf_counter() - warmup_started
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - started)
    median = sorted(times)[len(times) // 2]
    return {
        "impl": args.impl,
        "tokens_per_s": args.batch * args.seq_len / median,
        "step_s": median,
        "warmup_s": warmup_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each implementation")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)} (the first is the baseline)")
    parser.add_argument("--impl", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(run_one(args)))
        return

    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    passthrough = [f"--preset={args.preset}", f"--batch={args.batch}", f"--seq-len={args.seq_len}",
                   f"--steps={args.steps}", f"--warmup={args.warmup}", f"--threads={args.threads}"]
    for round_index in range(args.rounds):
        for impl in variants if round_index % 2 == 0 else variants[::-1]:
            output = subprocess.run([sys.executable, __file__, f"--impl={impl}", *passthrough],
                                    check=True, capture_output=True, text=True).stdout
            results[impl].append(json.loads(output.strip().splitlines()[-1]))
            print(f"  round {round_index + 1} {impl:>14}: {results[impl][-1]['tokens_per_s']:8.0f} tokens/s", flush=True)

    best = {impl: max(runs, key=lambda r: r["tokens_per_s"]) for impl, runs in results.items()}
    baseline = best[variants[0]]["tokens_per_s"]
    print(f"\nELECTRA-{args.preset} pretraining step, batch {args.batch} x {args.seq_len}, {args.threads} threads, "
          f"torch {torch.__version__} (best of {args.rounds} runs, median of {args.steps} steps each)")
    print(f"{'':>14} {'tokens/s':>10} {'step s':>8} {'x ' + variants[0]:>16} {'warm-up s':>10} {'peak RSS MB':>12} "
          f"{'params':>11}")
    for impl in variants:
        r = best[impl]
        print(f"{impl:>14} {r['tokens_per_s']:10.0f} {r['step_s']:8.3f} {r['tokens_per_s'] / baseline:16.2f} "
              f"{r['warmup_s']:10.1f} {r['peak_rss_mb']:12.0f} {r['parameters']:11,d}")
    print(f"(target: ours >= 1.5x transformers; warm-up is {args.warmup} steps, compilation included)")


if __name__ == "__main__":
    main()
