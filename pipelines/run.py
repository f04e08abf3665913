"""`electra run`: prepare -> pretrain -> finetune -> register, as one command that can run on a schedule.

Each stage is skipped when its committed output already matches its inputs and config, so a scheduled run
with no new data finishes in seconds. New input files are tokenized alone (prepare is incremental); when
the prepared data changed, pretraining continues from its latest checkpoint for `retrain_steps` more steps
(or starts a fresh run); then a new fine-tune is registered and promoted only if it is better. The whole
run holds a lease on ROOT, so two firings of a schedule never write the same outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

from electra_core import storage
from pipelines.config import (FinetuneConfig, PipelineConfig, PrepareConfig, PretrainConfig, from_dict,
                              override_origins, pipeline_sections, saved_dict)
from pipelines.errors import InputError
from pipelines.lease import Lease
from pipelines.secrets import redact_text

RECORD_FILE = "pipeline_record.json"
LAST_RUN_FILE = "last_run.json"


def run_pipeline(config_file: str | None, overrides: list[str] | None = None, address: str | None = None,
                 log=print) -> dict:
    """Runs the pipeline of `config_file` (+ `--set section.key=value` overrides); returns its summary."""
    started = time.perf_counter()
    where = config_file or "command line"
    sections = pipeline_sections(config_file, overrides)
    origins = override_origins(overrides)
    for name, cls in (("prepare", PrepareConfig), ("pretrain", PretrainConfig), ("finetune", FinetuneConfig)):
        from_dict(cls, sections[name], where, origins.get(name))  # every section is checked before any work starts
    check_named_inputs(sections, where)
    pipeline = from_dict(PipelineConfig, sections["pipeline"], where, origins.get("pipeline"))
    pipeline = dataclasses.replace(pipeline, root=storage.absolute(pipeline.root))
    with Lease(pipeline.root, pipeline.lease_ttl_s, log=log):
        demo = None
        if pipeline.demo_data:
            from pipelines.demo_data import write_demo_data

            demo = write_demo_data(storage.join(pipeline.root, "demo_data"), log=log)

        from pipelines.prepare import run_prepare

        prepare = prepare_config(sections["prepare"], pipeline, demo, where)
        prepared = run_prepare(prepare, address=address, log=log)

        pretrain, up_to_date = plan_pretrain(sections["pretrain"], pipeline, prepared["output"], prepared["manifest"],
                                             where)
        if up_to_date:
            from pipelines.pretrain.stage import run_uri

            pretrained = json.loads(storage.read_text(storage.join(run_uri(pretrain), "result.json")))
            log(f"electra pretrain: {pretrained['run']} is up to date ({pretrained['steps']} steps on dataset "
                f"{pretrained['dataset_fingerprint']}); nothing to do")
        else:
            from pipelines.pretrain import run_pretrain

            pretrained = run_pretrain(pretrain, address=address, log=log)
            if "export" not in pretrained:
                raise InputError("pretrain.stop_at_step ends pretraining before max_steps; `electra run` needs the "
                                 "export (remove stop_at_step, or run `electra pretrain` alone)")

        finetune, key = finetune_config(sections["finetune"], pipeline, pretrained, demo, where)
        finetuned = finetune_once(finetune, key, address, log)

        summary = {
            "root": pipeline.root,
            "data": {"uri": prepared["output"], "skipped": prepared["skipped"],
                     "sequences": prepared["manifest"]["counts"]["sequences"],
                     "dataset_fingerprint": prepared["manifest"]["dataset_fingerprint"]},
            "pretrain": {"run": pretrained["run"], "skipped": up_to_date, "steps": pretrained["steps"],
                         "export": pretrained["export"], "loss_curve": pretrained["loss_curve"],
                         "final_loss": pretrained.get("final_metrics", {}).get("loss")},
            "finetune": finetune_summary(finetuned),
            "registry": finetuned.get("registry"),
            "seconds": time.perf_counter() - started,
            "config": {name: saved_dict(values) for name, values in sections.items()},
        }
        storage.write_text(storage.join(pipeline.root, LAST_RUN_FILE), json.dumps(summary, indent=2) + "\n")
    print_summary(summary, log)
    return summary


# Inputs a section may name that exist before the run starts (the others are made by an earlier stage).
NAMED_INPUTS = (("prepare", "tokenizer"), ("pretrain", "init_from"), ("finetune", "model"), ("finetune", "train"),
                ("finetune", "eval"))


def check_named_inputs(sections: dict[str, dict], where: str) -> None:
    """A file that a later stage reads and the config names is checked now: missing, it was an error only after
    prepare and pretrain had run (97 s on the smallest config)."""
    for section, key in NAMED_INPUTS:
        uri = sections[section].get(key)
        if uri and not storage.exists(uri):
            raise InputError(f"{where}: {section}.{key}: {uri}: no such file or directory")


# ----------------------------------------------------------------------------------------------------------
# Wiring the stages: URIs a section leaves empty come from the pipeline's root and from the previous stage
# ----------------------------------------------------------------------------------------------------------


def prepare_config(values: dict[str, Any], pipeline: PipelineConfig, demo: dict | None, where: str) -> PrepareConfig:
    values = dict(values)
    values.setdefault("output", storage.join(pipeline.root, "data"))
    if demo is not None:
        values.setdefault("inputs", [demo["corpus"]])
    if not values.get("inputs"):
        raise InputError(f"{where}: prepare.inputs is required (files, directories or globs of raw text)")
    return from_dict(PrepareConfig, values, where)  # run_prepare makes its local paths absolute


def plan_pretrain(values: dict[str, Any], pipeline: PipelineConfig, data: str, manifest: dict,
                  where: str) -> tuple[PretrainConfig, bool]:
    """The pretraining to run now, and whether the run already holds it (then nothing is trained).

    Same dataset as the run's last export and no more steps asked: up to date. Changed dataset: continue the
    run for retrain_steps more steps (or up to a max_steps raised beyond that), or (retrain: fresh) a new run
    named after the dataset.
    """
    from pipelines.pretrain.stage import run_uri

    values = dict(values)
    values.setdefault("data", data)
    values.setdefault("storage", storage.join(pipeline.root, "runs"))
    values.setdefault("name", pipeline.name)
    config = from_dict(PretrainConfig, values, where)
    fingerprint = manifest["dataset_fingerprint"]
    previous = _read_json(storage.join(run_uri(config), "result.json"))
    if previous is None:
        return config, False
    if previous["dataset_fingerprint"] == fingerprint:
        if previous["steps"] >= config.max_steps:
            return dataclasses.replace(config, max_steps=previous["steps"]), True
        return config, False
    if pipeline.retrain == "fresh":
        fresh = dataclasses.replace(config, name=f"{config.name}-{fingerprint[:8]}")
        done = _read_json(storage.join(run_uri(fresh), "result.json"))
        return (fresh, False) if done is None else (dataclasses.replace(fresh, max_steps=done["steps"]), True)
    return dataclasses.replace(config, max_steps=max(config.max_steps, previous["steps"] + pipeline.retrain_steps)), False


def finetune_config(values: dict[str, Any], pipeline: PipelineConfig, pretrained: dict, demo: dict | None,
                    where: str) -> tuple[FinetuneConfig, str]:
    """The fine-tune of this pretrained model, and the key naming (model, config): one output per key."""
    values = dict(values)
    values.setdefault("model", pretrained["run"])
    values.setdefault("register", pipeline.name)
    if demo is not None:
        values.setdefault("train", demo["train"])
        values.setdefault("eval", demo["eval"])
    for name in ("train", "eval"):
        if not values.get(name):
            raise InputError(f"{where}: finetune.{name} is required (labeled data: .tsv, .csv, .jsonl or .parquet; "
                             "tagged sentences for token-classification)")
    if "tracking_uri" not in values and not os.environ.get("MLFLOW_TRACKING_URI") and "://" not in pipeline.root:
        # The embedded registry lives with the pipeline's outputs (not in the working directory, which is a
        # temporary copy under `ray job submit`).
        os.makedirs(os.path.join(pipeline.root, "mlflow"), exist_ok=True)
        values["tracking_uri"] = f"sqlite:///{os.path.join(pipeline.root, 'mlflow', 'mlflow.db')}"
    identity = {"model": pretrained["run"], "steps": pretrained["steps"],
                "dataset_fingerprint": pretrained["dataset_fingerprint"],
                "finetune": saved_dict({k: v for k, v in sorted(values.items()) if k not in ("output", "tracking_uri")})}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    key = f"{os.path.basename(pretrained['run'].rstrip('/'))}-step{pretrained['steps']}-{digest}"
    values.setdefault("output", storage.join(pipeline.root, "finetune", key))
    config = from_dict(FinetuneConfig, values, where)
    return dataclasses.replace(config, output=storage.absolute(config.output)), key


def finetune_once(config: FinetuneConfig, key: str, address: str | None, log) -> dict:
    """Fine-tunes (and registers) unless this model and config were already fine-tuned into the output."""
    record_uri = storage.join(config.output, RECORD_FILE)
    record = _read_json(record_uri)
    if record is not None and record.get("key") == key:
        log(f"electra finetune: {config.output} is up to date (eval {record['metrics']['metric']} "
            f"{record['metrics']['value']:.4f}); nothing to do")
        return {**record, "skipped": True}
    from pipelines.finetune import run_finetune

    result = run_finetune(config, address=address, log=log)
    record = {"key": key, "output": result["output"], "metrics": result["metrics"],
              "registry": result.get("registry")}
    storage.write_text(record_uri, json.dumps(record, indent=2) + "\n")  # written last: the stage's commit
    return {**record, "skipped": False}


def finetune_summary(finetuned: dict) -> dict:
    """The fine-tune's line of the summary: the median over trials and, with a baseline, its score and the gain."""
    metrics = finetuned["metrics"]
    summary = {"output": finetuned["output"], "skipped": finetuned["skipped"], "metric": metrics["metric"],
               "value": metrics["value"], "trials": metrics["summary"]["n"], "seconds": metrics["seconds"],
               "task_type": metrics.get("task_type", "classification")}
    if "baseline" in metrics:
        summary.update(baseline=metrics["baseline"]["kind"], baseline_value=metrics["baseline"]["summary"]["median"],
                       baseline_seconds=metrics["baseline"]["seconds"],
                       pretraining_gain=metrics["pretraining_gain"]["mean"])
    return summary


def _read_json(uri: str) -> dict | None:
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------------
# The summary a user reads at the end
# ----------------------------------------------------------------------------------------------------------


def print_summary(summary: dict, log=print) -> None:
    data, pretrain, finetune, registry = (summary[k] for k in ("data", "pretrain", "finetune", "registry"))

    def state(part: dict) -> str:
        return "up to date, skipped" if part["skipped"] else "done"

    loss = f", loss {pretrain['final_loss']:.3f}" if pretrain.get("final_loss") is not None else ""
    lines = [
        f"electra run: finished in {summary['seconds']:.0f} s",
        f"  data         {data['uri']}  ({data['sequences']:,} sequences; {state(data)})",
        f"  pretrain     {pretrain['run']}  ({pretrain['steps']} steps{loss}; {state(pretrain)})",
        f"  loss plot    {pretrain['loss_curve']}",
        f"  discriminator {pretrain['export'].get('discriminator') or pretrain['export'].get('generator')}",
        f"  fine-tuned   {finetune['output']}  (eval {finetune['metric']} {finetune['value']:.4f}"
        + (f", median of {finetune['trials']} trials" if finetune["trials"] > 1 else "") + f"; {state(finetune)})",
    ]
    if "pretraining_gain" in finetune:
        lines.append(f"  baseline     random weights of the same shape: eval {finetune['metric']} "
                     f"{finetune['baseline_value']:.4f} ({finetune['baseline_seconds']:.0f} s of fine-tuning)")
        verdict = "" if finetune["pretraining_gain"] > 0 else "  <- pretraining did not help"
        lines.append(f"  gain         {finetune['pretraining_gain']:+.4f} {finetune['metric']} from pretraining "
                     f"(mean over trials){verdict}")
    model_class, example = {
        "token-classification": ("ElectraForTokenClassification", "{'tokens': [['Ada', 'Lovelace', '...']]}"),
        "question-answering": ("ElectraForQuestionAnswering", "{'question': ['...'], 'context': ['...']}"),
    }.get(finetune.get("task_type"), ("ElectraForSequenceClassification", "{'sentence': ['...']}"))
    if registry:
        lines += [
            f"  registered   {registry['name']} version {registry['version']}: {registry['decision']}",
            f"  registry     {redact_text(registry['tracking_uri'])}",
            "load it:",
            f"  transformers: {model_class}.from_pretrained({finetune['output']!r})",
            f"  MLflow:       mlflow.set_tracking_uri({redact_text(registry['tracking_uri'])!r})",
            f"                mlflow.pyfunc.load_model('models:/{registry['name']}@champion')"
            f".predict(pandas.DataFrame({example}))",
        ]
    else:
        lines += ["load it:", f"  transformers: {model_class}.from_pretrained({finetune['output']!r})"]
    log("\n".join(lines))
