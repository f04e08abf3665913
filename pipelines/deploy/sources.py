"""Where a deployable model comes from: a fine-tune output directory, an `electra export` directory, or a
registered version (a fine-tune logged as a pyfunc, or an export logged with the ONNX flavor).

    resolve_model("models:/electra-demo@champion", None, work)
    -> {"uri": ..., "kind": "finetune" | "onnx", "directory": <local or storage URI>, "name", "version", "run_id"}

Registered versions are downloaded into `work`; directories on object storage are used where they are (the torch
loaders read any storage URI) unless the caller asks for a local copy.
"""

from __future__ import annotations

import json
import os

from electra_core import storage
from pipelines.errors import InputError

FINETUNE_MARKER, EXPORT_MARKER = "finetune_config.json", "export.json"


# What export and serve take: a model that answers one label (or value) per text or text pair.
DEPLOYABLE_TASKS = ("classification", "regression")


def resolve_model(uri: str, tracking_uri: str | None, work: str) -> dict:
    if uri.startswith("models:/"):
        source = _registered_model(uri, tracking_uri, work)
    elif storage.exists(storage.join(uri, EXPORT_MARKER)):
        source = {"uri": uri, "kind": "onnx", "directory": uri}
    elif storage.exists(storage.join(uri, FINETUNE_MARKER)):
        source = {"uri": uri, "kind": "finetune", "directory": uri}
    else:
        raise InputError(f"{uri}: not a fine-tuned model or an export (no {FINETUNE_MARKER} or {EXPORT_MARKER}); "
                         "give an `electra finetune` or `electra export` output directory, or models:/NAME@ALIAS")
    if source["kind"] == "finetune":
        check_deployable(source)
    return source


def check_deployable(source: dict) -> None:
    """A token-classification or question-answering model would be exported and served as a sentence
    classifier, wrongly: refused."""
    task_type = json.loads(storage.read_text(storage.join(source["directory"], "metrics.json"))).get("task_type")
    if task_type not in DEPLOYABLE_TASKS:
        raise InputError(f"{source['uri']}: a {task_type} model; electra export and serve take sentence "
                         "classification and regression models only. Serve it through its registered pyfunc "
                         "(mlflow.pyfunc.load_model or `mlflow models serve`)")


def local_copy(directory: str, work: str) -> str:
    """`directory` itself when it is local, else its files copied into `work` (onnxruntime reads local files)."""
    if storage.is_local(directory):
        return storage.filesystem(directory)[1]
    fs, root = storage.filesystem(directory)
    target = os.path.join(work, "model")
    os.makedirs(target, exist_ok=True)
    for path in fs.ls(root, detail=False):
        if fs.isfile(path):
            fs.get_file(path, os.path.join(target, os.path.basename(path)))
    return target


def _registered_model(uri: str, tracking_uri: str | None, work: str) -> dict:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.environment import scoped_environment
    from pipelines.finetune.registry import tracking_uri as resolved_tracking_uri
    from pipelines.secrets import redact_text

    name, _, alias = uri.removeprefix("models:/").partition("@")
    with scoped_environment("MLFLOW_TRACKING_URI"):
        registry = resolved_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(registry)
        client = MlflowClient(tracking_uri=registry)
        try:
            if alias:
                version = client.get_model_version_by_alias(name, alias)
            elif "/" in name:
                name, number = name.split("/", 1)
                version = client.get_model_version(name, number)
            else:
                raise InputError(f"{uri}: give models:/NAME@ALIAS or models:/NAME/VERSION")
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}",
                                                        dst_path=os.path.join(work, "registered"))
        except MlflowException as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"{uri}: not found in the registry {redact_text(registry)} ({first})") from None
    found = {"uri": uri, "name": name, "version": str(version.version), "run_id": version.run_id}
    directory = _classifier_artifact(local)
    if directory is not None:
        return {**found, "kind": "finetune", "directory": directory}
    directory = _onnx_export(local)
    if directory is not None:
        return {**found, "kind": "onnx", "directory": directory}
    raise InputError(f"{uri}: version {version.version} holds neither a fine-tuned classifier nor an ONNX export")


def _classifier_artifact(model_dir: str) -> str | None:
    """The fine-tune directory inside a downloaded pyfunc model: its MLmodel names where the `classifier`
    artifact was stored (under the fine-tune directory's own name)."""
    try:
        directory = os.path.join(model_dir, _flavors(model_dir)["python_function"]["artifacts"]["classifier"]["path"])
    except (OSError, KeyError, TypeError):
        return None
    return directory if os.path.exists(os.path.join(directory, FINETUNE_MARKER)) else None


def _onnx_export(model_dir: str) -> str | None:
    """An export directory made from a downloaded ONNX-flavor version: `electra export --register` logged the
    tokenizer, config.json and export.json as the model's extra files, which MLflow keeps under extra_files/."""
    try:
        graph = os.path.join(model_dir, _flavors(model_dir)["onnx"]["data"])
    except (OSError, KeyError, TypeError):
        return None
    extra = os.path.join(model_dir, "extra_files")
    if not (os.path.isfile(graph) and os.path.exists(os.path.join(extra, EXPORT_MARKER))):
        return None
    os.replace(graph, os.path.join(extra, "model.onnx"))
    return extra


def _flavors(model_dir: str) -> dict:
    from pipelines.config import read_yaml

    with open(os.path.join(model_dir, "MLmodel")) as handle:
        return read_yaml(handle.read())["flavors"]
