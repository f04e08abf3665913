"""The smallest end-to-end run: stdlib docstrings -> WordPiece tokenizer -> tiny ELECTRA -> Hugging Face export.

One process, no Ray: it shows that the model trains and that its export loads in transformers. The full
pipeline (prepare on Ray Data, pretrain on Ray Train, finetune and register) builds on the same parts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch

from electra_core import ElectraConfig, ElectraPretrainingModel, save_tokenizer, special_token_ids, train_tokenizer
from electra_core import storage
from pipelines.demo_corpus import stdlib_docstrings


@dataclass
class DemoConfig:
    """Settings of the local demo run."""

    output: str = "outputs/demo"
    """Where the export and the metrics go (any storage URI)."""
    steps: int = 300
    """Optimizer steps."""
    seq_len: int = 128
    """Tokens per training sequence."""
    batch_size: int = 32
    """Sequences per step."""
    vocab_size: int = 4000
    """WordPiece vocabulary trained on the corpus."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warmup over the first 10% of steps, then linear decay)."""
    seed: int = 0
    """Seed of initialisation, data order and masking."""
    corpus_chars: int = 1_500_000
    """Characters of docstrings to use."""


def pack_token_stream(token_lists: list[list[int]], seq_len: int, cls_id: int, sep_id: int) -> torch.Tensor:
    """Concatenates tokenized paragraphs into full [CLS] ... [SEP] rows of seq_len tokens (no padding)."""
    stream = [token for tokens in token_lists for token in tokens]
    body = seq_len - 2
    rows = len(stream) // body
    chunks = torch.tensor(stream[: rows * body]).view(rows, body)
    return torch.cat([torch.full((rows, 1), cls_id), chunks, torch.full((rows, 1), sep_id)], dim=1)


def run_demo(config: DemoConfig, log=print) -> dict:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    paragraphs = list(stdlib_docstrings(config.corpus_chars))
    tokenizer = train_tokenizer(paragraphs, vocab_size=config.vocab_size)
    ids = special_token_ids(tokenizer)
    encodings = tokenizer.encode_batch(paragraphs, add_special_tokens=False)
    sequences = pack_token_stream([e.ids for e in encodings], config.seq_len, ids["cls_token_id"], ids["sep_token_id"])
    log(f"corpus: {len(paragraphs):,} docstring paragraphs, {sequences.numel():,} tokens in {len(sequences):,} "
        f"sequences of {config.seq_len}")

    model_config = ElectraConfig.from_preset("tiny", max_position_embeddings=config.seq_len, **ids)
    model = ElectraPretrainingModel(model_config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    warmup = max(1, config.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (config.steps - step) / (config.steps - warmup)))
    )
    data_rng = torch.Generator().manual_seed(config.seed)
    mask_rng = torch.Generator().manual_seed(config.seed + 1)
    order = torch.randperm(len(sequences), generator=data_rng)
    history = []
    tick = time.perf_counter()
    for step in range(config.steps):
        start = (step * config.batch_size) % len(order)
        batch = sequences[order[start: start + config.batch_size]]
        output = model(input_ids=batch, rng=mask_rng)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.steps - 1:
            metrics = {"step": step, **output.metrics(), "lr": schedule.get_last_lr()[0]}
            metrics["tokens_per_s"] = (min(50, step + 1) * batch.numel()) / (time.perf_counter() - tick)
            tick = time.perf_counter()
            history.append(metrics)
            log(f"step {step:5d}  loss {metrics['loss']:7.3f}  gen acc {metrics['generator_accuracy']:.3f}  "
                f"disc acc {metrics['discriminator_accuracy']:.3f}  {metrics['tokens_per_s']:,.0f} tokens/s")

    export = storage.join(config.output, "export")
    model.save_pretrained(export)
    for part in ("discriminator", "generator"):
        save_tokenizer(tokenizer, storage.join(export, part), model_max_length=config.seq_len)
    storage.write_text(storage.join(config.output, "metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in history))
    storage.write_text(storage.join(config.output, "demo_config.json"), json.dumps(asdict(config), indent=2) + "\n")
    result = {"export": export, "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"],
              "seconds": time.perf_counter() - started}
    log(f"done in {result['seconds']:.0f} s: loss {result['first_loss']:.2f} -> {result['last_loss']:.2f}")
    log(f"discriminator: {storage.join(export, 'discriminator')}")
    log("load it with transformers:\n"
        f"  ElectraForPreTraining.from_pretrained({storage.join(export, 'discriminator')!r})\n"
        f"  ElectraTokenizerFast.from_pretrained({storage.join(export, 'discriminator')!r})")
    return result
