"""The fine-tuning loop on each Ray Train worker: layer-wise learning-rate decay, warmup, evaluation each
epoch, the best epoch kept. Rank 0 evaluates on the whole eval set and writes the outputs."""

from __future__ import annotations

import json
import logging
import math
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from electra_core import ElectraForSequenceClassification, load_tokenizer, save_tokenizer, storage
from electra_core.modeling import takes_weight_decay
from pipelines.config import FinetuneConfig, saved_dict
from pipelines.finetune.metrics import classification_metrics, regression_metrics

# Worker output goes through logging, as in pipelines.pretrain.loop.
logger = logging.getLogger(__name__)

_LAYER = re.compile(r"electra\.encoder\.layer\.(\d+)\.")


def layerwise_parameter_groups(model: torch.nn.Module, config: FinetuneConfig, num_layers: int) -> list[dict]:
    """lr * layer_decay^depth, depth 0 for the head, L - i for encoder layer i, L + 1 for the embeddings
    (ELECTRA's fine-tuning recipe); no weight decay on biases and LayerNorm weights."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        name = name.removeprefix("module.")
        match = _LAYER.match(name)
        if match:
            depth = num_layers - int(match.group(1))
        elif name.startswith("electra."):
            depth = num_layers + 1
        else:
            depth = 0
        decay = takes_weight_decay(name)
        group = groups.setdefault((depth, decay), {
            "params": [], "lr_scale": config.layer_decay**depth, "weight_decay": config.weight_decay if decay else 0.0,
        })
        group["params"].append(param)
    return list(groups.values())


def encode(tokenizer, texts: list[str], pairs: list[str] | None) -> list[list[int]]:
    inputs = texts if pairs is None else list(zip(texts, pairs))
    return [(e.ids, e.type_ids) for e in tokenizer.encode_batch(inputs)]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(examples), length), dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, types) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        token_type_ids[row, : len(types)] = torch.tensor(types)
        attention_mask[row, : len(ids)] = 1
    return {k: v.to(device) for k, v in
            {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}.items()}


def predict(model, examples, pad_id: int, device, batch_size: int = 128) -> np.ndarray:
    """Logits for every example, in order."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start: start + batch_size], pad_id, device)
            outputs.append(model(**batch).logits.float().cpu())
    model.train()
    return torch.cat(outputs).numpy()


def evaluate(logits: np.ndarray, labels: np.ndarray, task_type: str, num_labels: int) -> dict[str, float]:
    if task_type == "regression":
        return regression_metrics(logits[:, 0], labels.astype(np.float64))
    return classification_metrics(logits.argmax(-1), labels.astype(np.int64), num_labels)


def finetune_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    config = FinetuneConfig(**loop_config["finetune"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.cpus_per_worker)
    torch.manual_seed(config.seed)
    device = ray.train.torch.get_device()
    regression = config.task_type == "regression"

    tokenizer = load_tokenizer(loop_config["model_dir"])
    tokenizer.enable_truncation(max_length=config.max_seq_len)
    tokenizer.no_padding()
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    train = encode(tokenizer, loop_config["train_texts"], loop_config["train_pairs"])
    train_labels = torch.tensor(loop_config["train_labels"], dtype=torch.float32 if regression else torch.long)
    evaluation = encode(tokenizer, loop_config["eval_texts"], loop_config["eval_pairs"])
    eval_labels = np.asarray(loop_config["eval_labels"])

    names = loop_config["label_names"]
    model = ElectraForSequenceClassification.from_pretrained(
        loop_config["model_dir"], num_labels=1 if regression else len(names),
        id2label=None if regression else dict(enumerate(names)),
        problem_type="regression" if regression else "single_label_classification",
    )
    num_layers = model.config.num_hidden_layers
    model = ray.train.torch.prepare_model(model)
    groups = layerwise_parameter_groups(model, config, num_layers)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-6, fused=True)  # one kernel

    per_rank = config.batch_size // world_size
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(total_steps * config.warmup_fraction))
    metric_name = loop_config["metric"]
    best: dict = {"value": -math.inf}
    step = 0
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train))
        losses = []
        for batch_start in range(0, steps_per_epoch * config.batch_size, config.batch_size):
            indices = order[batch_start: batch_start + config.batch_size][rank::world_size][:per_rank]
            if len(indices) == 0:
                indices = order[:1]  # every rank must take part in each all-reduce
            batch = collate([train[i] for i in indices], pad_id, device)
            scale = min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = config.lr * group["lr_scale"] * scale
            logits = model(**batch).logits
            targets = train_labels[indices].to(device)
            loss = F.mse_loss(logits.squeeze(-1), targets) if regression else F.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1

        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - started}
        if rank == 0:
            inner = model.module if hasattr(model, "module") else model
            logits = predict(inner, evaluation, pad_id, device)
            record.update(evaluate(logits, eval_labels, config.task_type, len(names)))
            if record[metric_name] > best["value"]:
                best = {"value": record[metric_name], "record": dict(record), "logits": logits,
                        "state": {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}}
            logger.info(f"epoch {epoch + 1}/{config.epochs}  train loss {record['train_loss']:.4f}  " + "  ".join(
                f"{k} {v:.4f}" for k, v in record.items() if k not in ("epoch", "train_loss", "seconds")))
        ray.train.report(record)

    if rank == 0:
        inner = model.module if hasattr(model, "module") else model
        inner.load_state_dict(best["state"])
        write_outputs(inner, tokenizer, config, loop_config, best)


def write_outputs(model, tokenizer, config: FinetuneConfig, loop_config: dict, best: dict) -> None:
    """The classifier with its tokenizer, metrics.json and the eval-set predictions."""
    output = config.output
    model.to("cpu").save_pretrained(output)
    tokenizer.no_truncation()
    save_tokenizer(tokenizer, output, model_max_length=config.max_seq_len)
    names = loop_config["label_names"]
    metrics = {"metric": loop_config["metric"], "value": best["value"], "best_epoch": best["record"]["epoch"],
               "eval": {k: v for k, v in best["record"].items() if k not in ("seconds",)},
               "task_type": config.task_type, "labels": names, "label_kind": loop_config["label_kind"]}
    storage.write_text(storage.join(output, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    lines = []
    for text, logits, label in zip(loop_config["eval_texts"], best["logits"], loop_config["eval_labels_raw"]):
        if config.task_type == "regression":
            lines.append({"text": text, "label": label, "prediction": float(logits[0])})
        else:
            probabilities = torch.softmax(torch.from_numpy(logits), -1).tolist()
            predicted = names[int(np.argmax(logits))]
            lines.append({"text": text, "label": label, "prediction": int(predicted) if
                          loop_config["label_kind"] == "int" else predicted,
                          "probabilities": dict(zip(names, probabilities))})
    storage.write_text(storage.join(output, "predictions.jsonl"), "".join(json.dumps(x) + "\n" for x in lines))
    storage.write_text(storage.join(output, "finetune_config.json"),
                       json.dumps(saved_dict(loop_config["finetune"]), indent=2, sort_keys=True) + "\n")
