"""Fine-tuning: one trial (a seed, a starting point) as a plain function, and the Ray Train worker that runs
every trial of a fine-tune.

`train_trial` is the whole recipe (layer-wise learning-rate decay, warmup then linear decay, clipping,
evaluation each epoch, the best epoch kept) and needs nothing but torch: Ray Train runs it on each worker,
the quality benchmarks run it in one process. A fine-tune runs `trials` seeds, each from the pretrained
discriminator and, with `baseline: scratch`, from random weights of the same shape, so that the pretraining
gain is measured with the same data, settings and seeds.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from electra_core import (ElectraConfig, ElectraForQuestionAnswering, ElectraForSequenceClassification,
                          ElectraForTokenClassification, save_tokenizer, storage)
from electra_core.modeling import takes_weight_decay
from pipelines.config import FinetuneConfig, saved_dict
from pipelines.divergence import Diverged, NonFiniteGuard, record_divergence
from pipelines.finetune.metrics import classification_metrics, regression_metrics

# Worker output goes through logging, as in pipelines.pretrain.loop.
logger = logging.getLogger(__name__)

_LAYER = re.compile(r"electra\.encoder\.layer\.(\d+)\.")
PRETRAINED, SCRATCH = "pretrained", "scratch"
MODEL_CLASSES = {"classification": ElectraForSequenceClassification, "regression": ElectraForSequenceClassification,
                 "token-classification": ElectraForTokenClassification,
                 "question-answering": ElectraForQuestionAnswering}


def layerwise_parameter_groups(model: torch.nn.Module, config: FinetuneConfig, num_layers: int) -> list[dict]:
    """lr * layer_decay^depth as the reference ELECTRA fine-tunes: depth 0 for the task head, L + 1 - i for
    encoder layer i (0-based; the top layer gets decay^2), L + 2 for the embeddings and their projection
    (google-research/electra, model/optimization.py `_get_layer_lrs`). No weight decay on biases and
    LayerNorm weights."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        name = name.removeprefix("module.")
        match = _LAYER.match(name)
        if match:
            depth = num_layers + 1 - int(match.group(1))
        elif name.startswith("electra."):
            depth = num_layers + 2
        else:
            depth = 0
        decay = takes_weight_decay(name)
        group = groups.setdefault((depth, decay), {
            "params": [], "lr_scale": config.layer_decay**depth, "weight_decay": config.weight_decay if decay else 0.0,
        })
        group["params"].append(param)
    return list(groups.values())


# ----------------------------------------------------------------------------------------------------------
# The task, tokenized once for every trial
# ----------------------------------------------------------------------------------------------------------


@dataclass
class EncodedTask:
    """A labeled sentence (or sentence-pair) task as token ids: what every trial trains and evaluates on. The
    methods are what a trial needs from a task; pipelines.finetune.span_tasks gives them for token
    classification and question answering."""

    train: list[tuple[list[int], list[int]]]
    train_labels: torch.Tensor
    evaluation: list[tuple[list[int], list[int]]]
    eval_labels: np.ndarray
    task_type: str
    num_labels: int
    metric: str
    pad_id: int

    @classmethod
    def from_texts(cls, tokenizer, max_seq_len: int, train: tuple, evaluation: tuple, task_type: str,
                   num_labels: int, metric: str) -> "EncodedTask":
        """train and evaluation are (texts, pairs or None, encoded labels)."""
        tokenizer.enable_truncation(max_length=max_seq_len)
        tokenizer.no_padding()
        regression = task_type == "regression"
        return cls(
            train=encode(tokenizer, train[0], train[1]),
            train_labels=torch.tensor(train[2], dtype=torch.float32 if regression else torch.long),
            evaluation=encode(tokenizer, evaluation[0], evaluation[1]),
            eval_labels=np.asarray(evaluation[2]),
            task_type=task_type, num_labels=num_labels, metric=metric,
            pad_id=tokenizer.token_to_id("[PAD]") or 0,
        )

    def targets(self, indices, device) -> torch.Tensor:
        return self.train_labels[indices].to(device)

    def loss(self, output, targets: torch.Tensor) -> torch.Tensor:
        """The loss of the model's output (its logits) on the batch's targets."""
        if self.task_type == "regression":
            return F.mse_loss(output.logits.squeeze(-1), targets)
        return F.cross_entropy(output.logits, targets)

    def predict(self, model, device) -> np.ndarray:
        return predict(model, self.evaluation, self.pad_id, device)

    def score(self, logits: np.ndarray) -> dict[str, float]:
        return evaluate(logits, self.eval_labels, self.task_type, self.num_labels)

    def saved_settings(self, loop_config: dict) -> dict:
        """What metrics.json keeps beside the scores for whoever answers with the model (the pyfunc)."""
        return {}

    def prediction_lines(self, logits: np.ndarray, loop_config: dict) -> list[dict]:
        """predictions.jsonl: each eval example as read (what electra export re-reads), its label and prediction."""
        names, lines = loop_config["label_names"], []
        pairs = loop_config["eval_pairs"] or [None] * len(loop_config["eval_texts"])
        for text, pair, row, label in zip(loop_config["eval_texts"], pairs, logits, loop_config["eval_labels_raw"]):
            line = {"text": text} if pair is None else {"text": text, "text_pair": pair}
            if self.task_type == "regression":
                lines.append({**line, "label": label, "prediction": float(row[0])})
                continue
            probabilities = torch.softmax(torch.from_numpy(row), -1).tolist()
            predicted = names[int(np.argmax(row))]
            lines.append({**line, "label": label, "prediction": int(predicted) if
                          loop_config["label_kind"] == "int" else predicted,
                          "probabilities": dict(zip(names, probabilities))})
        return lines


def encode_task(loop_config: dict, tokenizer, config: FinetuneConfig):
    """The loop config's task, encoded on this worker."""
    names = loop_config["label_names"]
    if config.task_type == "token-classification":
        from pipelines.finetune.span_tasks import TaggedTask

        return TaggedTask.from_files(tokenizer, config, names, loop_config["metric"])
    if config.task_type == "question-answering":
        from pipelines.finetune.span_tasks import QuestionTask

        return QuestionTask.from_files(tokenizer, config, loop_config["metric"])
    return EncodedTask.from_texts(
        tokenizer, config.max_seq_len,
        (loop_config["train_texts"], loop_config["train_pairs"], loop_config["train_labels"]),
        (loop_config["eval_texts"], loop_config["eval_pairs"], loop_config["eval_labels"]),
        config.task_type, 1 if config.task_type == "regression" else len(names), loop_config["metric"])


def encode(tokenizer, texts: list[str], pairs: list[str] | None) -> list[tuple[list[int], list[int]]]:
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


# ----------------------------------------------------------------------------------------------------------
# One trial
# ----------------------------------------------------------------------------------------------------------


def build_classifier(model_dir: str, start: str, seed: int, task, label_names: list[str],
                     rescale_embeddings: bool = False):
    """The classifier a trial starts from: the pretrained discriminator with a new head (its embedding tables
    rescaled to the initialisation's RMS when asked: see FinetuneConfig.rescale_embeddings), or (scratch) random
    weights of the same shape, built from the pretrained model's own config.json (the same tokenizer is used).
    The random weights are drawn as transformers draws them (attention_init normal, whatever the pretraining
    used): the baseline is what a user who skips pretraining would start from."""
    overrides = head_settings(task.task_type, label_names)
    model_class = MODEL_CLASSES[task.task_type]
    torch.manual_seed(seed)  # the head's (and, from scratch, every weight's) initialisation
    if start == PRETRAINED:
        model = model_class.from_pretrained(model_dir, **overrides)
        if rescale_embeddings:
            model.electra.embeddings.rescale_(model.config.initializer_range)
        return model
    config = ElectraConfig.load(storage.join(model_dir, "config.json")).replace(attention_init="normal",
                                                                                **overrides)
    return model_class(config)


def head_settings(task_type: str, label_names: list[str]) -> dict:
    """The config fields that shape a task's head (transformers' names)."""
    if task_type == "question-answering":
        return {"num_labels": 2, "id2label": None}  # a start and an end logit
    if task_type == "regression":
        return {"num_labels": 1, "id2label": None, "problem_type": "regression"}
    settings = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names))}
    if task_type == "classification":
        settings["problem_type"] = "single_label_classification"
    return settings


@dataclass
class TrialResult:
    """A trial's best epoch (by the task's metric) on the eval set."""

    start: str
    seed: int
    value: float
    best_epoch: int
    record: dict
    seconds: float
    logits: np.ndarray | None = field(default=None, repr=False)
    state: dict | None = field(default=None, repr=False)

    def summary(self) -> dict:
        return {"start": self.start, "seed": self.seed, "value": self.value, "best_epoch": self.best_epoch,
                "seconds": round(self.seconds, 2), "eval": self.record}


def train_trial(model: torch.nn.Module, task, config: FinetuneConfig, seed: int, *, start: str,
                num_layers: int, rank: int = 0, world_size: int = 1, device="cpu", keep_state: bool = True,
                on_epoch=None) -> TrialResult:
    """Fine-tunes `model` (possibly wrapped for data parallelism) for config.epochs and keeps its best epoch.
    `task` is an EncodedTask, or one of pipelines.finetune.span_tasks (the same methods).

    Each rank trains on its share of every batch; rank 0 evaluates on the whole eval set. `on_epoch(record)`
    is called on every rank after each epoch (Ray Train reports through it). A step whose gradient norm is not
    finite is skipped; config.max_nonfinite_steps of them in a row raise Diverged (on every rank at the same step).
    """
    started = time.perf_counter()
    torch.manual_seed(seed)  # dropout
    groups = layerwise_parameter_groups(model, config, num_layers)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-6, fused=True)  # one kernel
    per_rank = config.batch_size // world_size
    steps_per_epoch = math.ceil(len(task.train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(total_steps * config.warmup_fraction))
    inner = model.module if hasattr(model, "module") else model
    guard = NonFiniteGuard(config.max_nonfinite_steps, device)
    best: dict = {"value": -math.inf}
    step = 0
    for epoch in range(config.epochs):
        epoch_started = time.perf_counter()
        order = np.random.default_rng([seed, epoch]).permutation(len(task.train))
        losses, skipped = [], 0
        for batch_start in range(0, steps_per_epoch * config.batch_size, config.batch_size):
            indices = order[batch_start: batch_start + config.batch_size][rank::world_size][:per_rank]
            if len(indices) == 0:
                indices = order[:1]  # every rank must take part in each all-reduce
            batch = collate([task.train[i] for i in indices], task.pad_id, device)
            scale = min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = config.lr * group["lr_scale"] * scale
            loss = task.loss(model(**batch), task.targets(indices, device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            guard.skip_if_nonfinite(optimizer, torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            optimizer.step()
            losses.append(loss.detach())
            step += 1
            if step % guard.limit == 0:
                skipped += check_divergence(guard, step)

        skipped += check_divergence(guard, step)
        losses = torch.stack(losses)
        record = {"epoch": epoch + 1, "train_loss": float(losses[torch.isfinite(losses)].mean()),
                  "skipped_steps": skipped, "seconds": time.perf_counter() - epoch_started}
        if rank == 0:
            logits = task.predict(inner, device)
            record.update(task.score(logits))
            if record[task.metric] > best["value"]:
                best = {"value": record[task.metric], "record": dict(record), "logits": logits,
                        "state": {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}
                        if keep_state else None}
        if on_epoch is not None:
            on_epoch(record)
    if rank != 0:
        return TrialResult(start, seed, math.nan, 0, {}, time.perf_counter() - started)
    return TrialResult(start, seed, best["value"], best["record"]["epoch"],
                       {k: v for k, v in best["record"].items() if k != "seconds"},
                       time.perf_counter() - started, best["logits"], best["state"])


def epoch_line(record: dict, config: FinetuneConfig, metric: str, trial: int, seed: int, start: str) -> str:
    score = f", eval {metric} {record[metric]:.4f}" if metric in record else ""
    return (f"electra finetune: trial {trial + 1}/{config.trials} (seed {seed}) from {start}: epoch "
            f"{record['epoch']}/{config.epochs}, train loss {record['train_loss']:.4f}{score} "
            f"({record['seconds']:.0f} s)")


def check_divergence(guard: NonFiniteGuard, step: int) -> int:
    """Steps skipped since the last check; Diverged when the guard gives up (one host sync)."""
    skipped, gave_up = guard.read()
    if gave_up:
        raise Diverged(step, guard.limit)
    return skipped


# ----------------------------------------------------------------------------------------------------------
# Several trials, and the pretraining gain over the scratch baseline
# ----------------------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict:
    """mean, median, standard deviation (0 for one value), min and max."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "median": float(np.median(array)),
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "n": len(array)}


def median_trial(results: list[TrialResult]) -> TrialResult:
    """The trial whose score is the median (the lower of the two middle ones for an even count): the model
    that is kept is the one whose score the registry gate uses."""
    ranked = sorted(results, key=lambda r: (r.value, r.seed))
    return ranked[(len(ranked) - 1) // 2]


def pretraining_gain(pretrained: list[TrialResult], scratch: list[TrialResult]) -> dict:
    """The pretrained model's metric minus the scratch baseline's, trial by trial (same seeds), and its mean."""
    by_seed = {r.seed: r.value for r in scratch}
    differences = [r.value - by_seed[r.seed] for r in pretrained]
    return {"mean": float(np.mean(differences)), "per_trial": differences,
            "median_difference": float(np.median([r.value for r in pretrained]) - np.median(list(by_seed.values())))}


def finetune_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's entry point on every worker."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    run_trials(loop_config, context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device(),
               ray.train.torch.prepare_model, ray.train.report)


def finetune_in_this_process(loop_config: dict) -> None:
    """`finetune.launcher: local`: the same trials as one worker, in this process, without Ray."""
    device = torch.device("cuda") if loop_config["finetune"]["gpus_per_worker"] else torch.device("cpu")
    run_trials(loop_config, 0, 1, device, lambda model: model.to(device), lambda record: None)


def run_trials(loop_config: dict, rank: int, world_size: int, device, prepare_model, report_epoch) -> None:
    """Every trial (and its baseline), then rank 0 writes the kept one. `prepare_model` places a model (Ray
    Train wraps it for data parallelism); `report_epoch(record)` is told each epoch's figures."""
    from electra_core import load_tokenizer

    config = FinetuneConfig(**loop_config["finetune"])
    torch.set_num_threads(config.cpus_per_worker)

    tokenizer = load_tokenizer(loop_config["model_dir"])
    names = loop_config["label_names"]
    task = encode_task(loop_config, tokenizer, config)

    starts = [PRETRAINED] + ([SCRATCH] if config.baseline == "scratch" else [])
    results: dict[str, list[TrialResult]] = {start: [] for start in starts}
    for trial in range(config.trials):
        seed = config.seed + trial
        for start in starts:
            model = build_classifier(loop_config["model_dir"], start, seed, task, names, config.rescale_embeddings)
            num_layers = model.config.num_hidden_layers
            model = prepare_model(model)

            def report(record, start=start, seed=seed, trial=trial):
                if rank == 0:  # a fine-tune is minutes per epoch at Small and above: show that it moves
                    logger.info(epoch_line(record, config, task.metric, trial, seed, start))
                report_epoch({**record, "trial": seed, "start": start})

            try:
                result = train_trial(model, task, config, seed, start=start, num_layers=num_layers, rank=rank,
                                     world_size=world_size, device=device, keep_state=start == PRETRAINED,
                                     on_epoch=report)
            except Diverged as diverged:  # every rank stops at the same step; the driver reports it
                if rank == 0:
                    record_divergence(config.output, diverged, start=start, seed=seed)
                return
            if rank == 0:
                logger.info(f"electra finetune: trial {trial + 1}/{config.trials} (seed {seed}) from {start}: best "
                            f"epoch {result.best_epoch}, eval {task.metric} {result.value:.4f} in {result.seconds:.0f} s")
            results[start].append(result)
            del model

    if rank == 0:
        kept = median_trial(results[PRETRAINED])
        model = build_classifier(loop_config["model_dir"], PRETRAINED, kept.seed, task, names)
        model.load_state_dict(kept.state)
        write_outputs(model, tokenizer, config, loop_config, task, kept, results)


def trials_metrics(metric: str, kept: TrialResult, results: dict[str, list[TrialResult]]) -> dict:
    """metrics.json's figures: the gate's value (the median over trials), the kept trial's eval figures, every
    trial, and, with a baseline, the baseline's trials and the pretraining gain."""
    pretrained = results[PRETRAINED]
    metrics = {"metric": metric, "value": spread([r.value for r in pretrained])["median"],
               "best_epoch": kept.best_epoch, "kept_trial_seed": kept.seed, "eval": kept.record,
               "trials": [r.summary() for r in pretrained], "summary": spread([r.value for r in pretrained]),
               "seconds": sum(r.seconds for r in pretrained)}
    if SCRATCH in results:
        scratch = results[SCRATCH]
        metrics["baseline"] = {"kind": SCRATCH, "trials": [r.summary() for r in scratch],
                               "summary": spread([r.value for r in scratch]), "seconds": sum(r.seconds for r in scratch)}
        metrics["pretraining_gain"] = pretraining_gain(pretrained, scratch)
    return metrics


def write_outputs(model, tokenizer, config: FinetuneConfig, loop_config: dict, task,
                  kept: TrialResult, results: dict[str, list[TrialResult]]) -> None:
    """The kept model with its tokenizer, metrics.json (every trial) and its eval-set predictions."""
    output = config.output
    model.to("cpu").save_pretrained(output)
    tokenizer.no_truncation()
    save_tokenizer(tokenizer, output, model_max_length=config.max_seq_len)
    metrics = {**trials_metrics(loop_config["metric"], kept, results), "task_type": config.task_type,
               "labels": loop_config["label_names"], "label_kind": loop_config["label_kind"]}
    metrics.update(task.saved_settings(loop_config))
    storage.write_text(storage.join(output, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    lines = task.prediction_lines(kept.logits, loop_config)
    storage.write_text(storage.join(output, "predictions.jsonl"), "".join(json.dumps(x) + "\n" for x in lines))
    storage.write_text(storage.join(output, "finetune_config.json"),
                       json.dumps(saved_dict(loop_config["finetune"]), indent=2, sort_keys=True) + "\n")
