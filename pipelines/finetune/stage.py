"""The finetune stage on the driver: resolve the model, read and check the data, train on Ray Train.

Skeleton: parse config -> model directory and labeled data (every problem a one-line InputError) ->
TorchTrainer (workers run pipelines.finetune.loop), or the same trials in this process (launcher local) ->
outputs + result record (-> registry when asked).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

from electra_core import storage
from electra_core.tagging import is_entity_tag_set
from pipelines.config import TASK_METRICS, FinetuneConfig, to_dict
from pipelines.divergence import clear_divergence, raise_if_diverged
from pipelines.errors import InputError, check_writable_directory
from pipelines.finetune.data import LabelSpace, read_labeled


def resolve_model(uri: str) -> str:
    """A discriminator directory from a model URI: the directory itself, or a pretrain run's export."""
    if storage.exists(storage.join(uri, "config.json")):
        return uri
    result_uri = storage.join(uri, "result.json")
    if storage.exists(result_uri):
        export = json.loads(storage.read_text(result_uri))["export"]
        return export.get("discriminator") or export["generator"]
    for part in ("discriminator", "generator"):
        candidate = storage.join(uri, "export", part)
        if storage.exists(storage.join(candidate, "config.json")):
            return candidate
    raise InputError(f"{uri}: not a model directory (no config.json) nor a pretrain run (no result.json)")


def run_finetune(config: FinetuneConfig, address: str | None = None, log=print) -> dict:
    started = time.perf_counter()
    for name in ("model", "train", "eval", "output"):
        if not getattr(config, name):
            raise InputError(f"--{name} is required")
    # Workers may run in another directory (a cluster started elsewhere): local paths are made absolute here.
    config = dataclasses.replace(config, model=storage.absolute(config.model), output=storage.absolute(config.output),
                                 train=storage.absolute(config.train), eval=storage.absolute(config.eval))
    model_dir = resolve_model(config.model)
    if not storage.exists(storage.join(model_dir, "tokenizer.json")):
        raise InputError(f"{model_dir}: no tokenizer.json next to the model")
    positions = json.loads(storage.read_text(storage.join(model_dir, "config.json"))).get("max_position_embeddings")
    if positions is not None and config.max_seq_len > positions:  # a worker would fail on its first long example
        raise InputError(f"--max-seq-len {config.max_seq_len} is longer than the model's {positions} positions "
                         f"({model_dir}); use {positions} or less")
    read_task = {"token-classification": tagged_loop_config,
                 "question-answering": question_loop_config}.get(config.task_type, labeled_loop_config)
    loop_config = {"finetune": to_dict(config), "model_dir": model_dir,
                   "metric": config.metric or TASK_METRICS[config.task_type][0], **read_task(config, model_dir, log)}
    check_writable_directory(config.output, "--output")
    clear_divergence(config.output)
    if config.launcher == "local":
        from pipelines.finetune.loop import finetune_in_this_process

        log("electra finetune: training in this process, without Ray (launcher local)")
        finetune_in_this_process(loop_config)
    else:
        train_on_ray(config, loop_config, address)
    raise_if_diverged(config.output, "finetune", f"Lower finetune.lr (now {config.lr:g}) or raise "
                      "finetune.warmup_fraction")
    metrics = json.loads(storage.read_text(storage.join(config.output, "metrics.json")))
    metrics["seconds_total"] = time.perf_counter() - started
    storage.write_text(storage.join(config.output, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    for line in outcome_lines(metrics):
        log(line)
    result = {"output": config.output, "model": model_dir, "metrics": metrics}
    if config.register:
        from pipelines.finetune.registry import register

        result["registry"] = register(config.register, config.tracking_uri, config.output, to_dict(config), metrics,
                                      lineage(config.model, model_dir), log=log)
    return result


def labeled_loop_config(config: FinetuneConfig, model_dir: str, log) -> dict:
    """Sentence classification and regression: the rows read and checked here, their labels encoded (the task's
    part of the loop's config)."""
    train = read_labeled(config.train, config.text_column, config.text_pair_column, config.label_column,
                         strict=config.strict)
    evaluation = read_labeled(config.eval, train.columns[0], train.columns[1], train.columns[2], strict=config.strict)
    for warning in train.warnings + evaluation.warnings:
        log(f"warning: {warning}")
    labels = LabelSpace.from_training(train, config.task_type)
    log(f"electra finetune: {len(train.texts):,} training and {len(evaluation.texts):,} eval examples, "
        f"columns {train.columns}, {labels.num_labels} {'outputs' if labels.task_type == 'regression' else 'labels'}; "
        f"model {model_dir}")
    return {
        "label_names": labels.names, "label_kind": labels.kind,
        "train_texts": train.texts, "train_pairs": train.pairs, "train_labels": labels.encode(train),
        "eval_texts": evaluation.texts, "eval_pairs": evaluation.pairs, "eval_labels": labels.encode(evaluation),
        "eval_labels_raw": evaluation.labels,
    }


def tagged_loop_config(config: FinetuneConfig, model_dir: str, log) -> dict:
    """Token classification: both files read and checked here; the workers read them again from storage, so
    only the tag set travels in the loop's config."""
    from electra_core import load_tokenizer
    from pipelines.finetune.tagging_data import check_eval_tags, read_tagged, words_past

    train, evaluation = read_tagged(config.train, config.strict), read_tagged(config.eval, config.strict)
    for warning in train.warnings + evaluation.warnings:
        log(f"warning: {warning}")
    check_eval_tags(train, evaluation)
    tags = train.tag_set()
    if len(tags) < 2:
        raise InputError(f"{config.train}: every token is tagged {tags[0]!r}; token classification needs at least "
                         "two tags")
    scheme = "entity" if is_entity_tag_set(tags) else "token"
    log(f"electra finetune: {len(train.words):,} training and {len(evaluation.words):,} eval sentences, "
        f"{len(tags)} tags ({'entities: ' + ', '.join(entity_types(tags)) if scheme == 'entity' else 'per token'}); "
        f"model {model_dir}")
    cut = words_past(load_tokenizer(model_dir), evaluation.words, config.max_seq_len)
    if cut:
        log(f"warning: {config.eval}: {cut:,} words lie past --max-seq-len {config.max_seq_len} and get no "
            "prediction; they are scored as tagged O (or the commonest tag). Raise --max-seq-len or split long "
            "sentences")
    return {"label_names": tags, "label_kind": "str", "tag_scheme": scheme}


def question_loop_config(config: FinetuneConfig, model_dir: str, log) -> dict:
    """Extractive question answering: both files read and checked here (every answer where its answer_start
    says); the workers read them again from storage."""
    from electra_core import load_tokenizer
    from pipelines.finetune.qa_data import read_questions

    train, evaluation = read_questions(config.train), read_questions(config.eval)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.no_truncation()
    split = question_windows(config.train, train, tokenizer, config)
    question_windows(config.eval, evaluation, tokenizer, config)  # every eval question fits a window too
    missed = sum(1 for q, ws in zip(train, split) if q.answers and not any(w.start_position for w in ws))
    unanswerable = sum(1 for q in train if not q.answers)
    log(f"electra finetune: {len(train):,} training questions ({unanswerable:,} unanswerable) in "
        f"{sum(map(len, split)):,} windows of {config.max_seq_len} tokens, {len(evaluation):,} eval questions; "
        f"model {model_dir}")
    if missed:
        log(f"warning: {config.train}: {missed:,} answers lie in no single window (longer than a window's room, or "
            f"cut by the tokenizer) and are trained as no answer. Raise --max-seq-len or --doc-stride overlap")
    if unanswerable == 0 and any(not q.answers for q in evaluation):
        log(f"warning: {config.eval} has unanswerable questions but {config.train} has none: the model always "
            "answers with a span, so they all count as wrong")
    return {"label_names": [], "label_kind": "str"}


def question_windows(uri: str, questions: list, tokenizer, config: FinetuneConfig) -> list:
    from electra_core.question_answering import windows

    try:
        return [windows(tokenizer, q, config.max_seq_len, config.doc_stride) for q in questions]
    except ValueError as error:  # a question too long for a window at this max_seq_len
        raise InputError(f"{uri}: {error}") from None


def entity_types(tags: list[str]) -> list[str]:
    return sorted({tag[2:] for tag in tags if tag != "O"})


def train_on_ray(config: FinetuneConfig, loop_config: dict, address: str | None) -> None:
    """The trials on Ray Train workers (pipelines.finetune.loop.finetune_loop_per_worker)."""
    from pipelines.ray_runtime import check_workers_fit, ensure_ray, fit, ray_storage

    ensure_ray(address)
    check_workers_fit(config.workers, config.cpus_per_worker, config.gpus_per_worker, "finetune")
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.finetune.loop import finetune_loop_per_worker

    storage_path, filesystem = ray_storage(config.output)
    trainer = TorchTrainer(
        finetune_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.gpus_per_worker > 0,
            resources_per_worker={"CPU": config.cpus_per_worker,
                                  **({"GPU": config.gpus_per_worker} if config.gpus_per_worker else {})},
        ),
        # Ray Train's own records of the run go under the output (no checkpoints are reported).
        run_config=ray.train.RunConfig(name="_ray", storage_path=storage_path, storage_filesystem=filesystem),
    )
    fit(trainer)


def outcome_lines(metrics: dict) -> list[str]:
    """What the user reads at the end of a fine-tune: the score over trials, the baseline's, the gain, and a
    warning in plain words when pretraining did not pay for itself."""
    metric, summary = metrics["metric"], metrics["summary"]
    trials = summary["n"]
    score = f"eval {metric} {metrics['value']:.4f}" + (
        f" (median of {trials} trials, mean {summary['mean']:.4f} ± {summary['std']:.4f})" if trials > 1 else "")
    lines = [f"electra finetune: {score}; kept the trial with seed {metrics['kept_trial_seed']} "
             f"(best epoch {metrics['best_epoch']}) in {metrics['seconds_total']:.0f} s"]
    lines += plateau_warnings(metrics)
    baseline = metrics.get("baseline")
    if baseline is None:
        return lines
    gain = metrics["pretraining_gain"]["mean"]
    lines.append(f"electra finetune: from random weights of the same shape (baseline scratch): eval {metric} "
                 f"{baseline['summary']['median']:.4f}" + (f" (median of {trials})" if trials > 1 else "")
                 + f" in {baseline['seconds']:.0f} s; pretraining gain {gain:+.4f} ({metric}, mean over trials)")
    if gain <= 0:
        lines.append(f"warning: pretraining did not help: the model fine-tuned from the pretrained encoder scores "
                     f"{gain:+.4f} {metric} against the same recipe from random weights, so on this task it is worth "
                     f"no more than skipping pretraining. Pretrain longer or on more text, or check the loss plot "
                     f"(a discriminator loss at its prior means the discriminator learned nothing).")
    return lines


# A trial whose best epoch still has a train loss within this share of ln(labels), the loss of a uniform guess,
# and whose eval predictions carry no correlation with the labels, never left chance.
PLATEAU_SHARE = 0.97


def never_left_chance(trial: dict, num_labels: int) -> bool:
    record = trial["eval"]
    return (record.get("mcc", 1.0) <= 0.0
            and record.get("train_loss", 0.0) >= PLATEAU_SHARE * math.log(num_labels))


def plateau_warnings(metrics: dict) -> list[str]:
    """Classification trials that never left chance, in plain words: a fine-tune that sat on the plateau where
    the head sees almost the same input for every example (#19: whether it leaves it within a run can depend
    on the data order), not a verdict on what pretraining learned."""
    if metrics.get("task_type") != "classification" or len(metrics.get("labels", [])) < 2:
        return []
    num_labels = len(metrics["labels"])
    lines = []
    for what, trials in (("from the pretrained encoder", metrics["trials"]),
                         ("of the baseline (random weights)", metrics.get("baseline", {}).get("trials", []))):
        stuck = [t["seed"] for t in trials if never_left_chance(t, num_labels)]
        if stuck:
            lines.append(f"warning: {len(stuck)} of {len(trials)} trials {what} never left chance (seeds "
                         f"{', '.join(map(str, stuck))}: train loss at ln {num_labels} = {math.log(num_labels):.3f}, "
                         f"eval predictions uncorrelated with the labels); the fine-tune sat on a plateau. Try more "
                         f"--epochs or --trials, or another --lr.")
    return lines


def lineage(model_uri: str, model_dir: str) -> dict:
    """Where the model came from: the pretrain run and its dataset, when the model is a run's export."""
    record = {"model": model_dir}
    result_uri = storage.join(model_uri, "result.json")
    if storage.exists(result_uri):
        pretrain = json.loads(storage.read_text(result_uri))
        record.update(pretrain_run=pretrain.get("run"), dataset=pretrain.get("dataset"),
                      dataset_fingerprint=pretrain.get("dataset_fingerprint"))
    return record
