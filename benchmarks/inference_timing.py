"""How benchmarks/inference.py times one variant. Shared by the variants measured in the project's environment and
by benchmarks/optimum_variant.py in Optimum's, so it imports numpy only (never the project's code)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def eval_set(model_dir: str) -> tuple[list, list[str]]:
    """The fine-tune's own eval set, from its predictions.jsonl: inputs (texts or [first, second] pairs), gold labels."""
    rows = [json.loads(line) for line in Path(model_dir, "predictions.jsonl").read_text().splitlines() if line]
    inputs = [[r["text"], r["text_pair"]] if "text_pair" in r else r["text"] for r in rows]
    return inputs, [str(r["label"]) for r in rows]


def measure(predict, inputs: list, gold: list[str], calls: int, rounds: int = 5) -> dict:
    """Accuracy over the whole eval set at batch 32; batch-1 latency p50/p99 over `calls` calls (after 10 warm-up
    calls); sentences/s at batch 32 as the median of `rounds` rounds of `calls // 32` batches (at least 10).

    A single pass over a few batches is about a second of work and moved by more than the differences between
    variants on a shared machine; the median of rounds is what the table compares."""
    predicted = [label for start in range(0, len(inputs), 32) for label in predict(inputs[start: start + 32])]
    accuracy = float(np.mean([p == g for p, g in zip(predicted, gold)]))
    for text in inputs[:10]:
        predict([text])
    latencies = []
    for i in range(calls):
        started = time.perf_counter()
        predict([inputs[i % len(inputs)]])
        latencies.append(time.perf_counter() - started)
    batches = [inputs[(i * 32) % len(inputs):][:32] for i in range(max(10, calls // 32))]
    sentences = sum(len(batch) for batch in batches)
    per_round = []
    for _ in range(rounds):
        started = time.perf_counter()
        for batch in batches:
            predict(batch)
        per_round.append(sentences / (time.perf_counter() - started))
    return {"accuracy": accuracy, "p50_ms": float(np.percentile(latencies, 50) * 1000),
            "p99_ms": float(np.percentile(latencies, 99) * 1000), "batch32_per_s": float(np.median(per_round)),
            "batch32_spread": [float(min(per_round)), float(max(per_round))]}


def tokenizer_predict(tokenizer, logits_of, model_dir: str):
    """predict(batch) -> labels for a model called as transformers' are: the fast tokenizer pads and truncates at
    the fine-tune's max_seq_len and returns torch tensors, `logits_of(encoded)` gives the logits."""
    max_len = json.loads(Path(model_dir, "finetune_config.json").read_text())["max_seq_len"]
    id2label = json.loads(Path(model_dir, "config.json").read_text())["id2label"]
    labels = [id2label[str(i)] for i in range(len(id2label))]

    def predict(batch: list) -> list[str]:
        pairs = isinstance(batch[0], list)
        first = [item[0] for item in batch] if pairs else batch
        second = [item[1] for item in batch] if pairs else None
        encoded = tokenizer(first, second, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return [labels[i] for i in logits_of(encoded).argmax(-1).tolist()]

    return predict
