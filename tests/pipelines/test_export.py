"""`electra export`: a fine-tuned classifier as ONNX, fp32 and int8, from a directory or the registry; it runs in
a process where torch cannot be imported and answers what the PyTorch model answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from electra_core import ElectraForSequenceClassification
from pipelines.cli import main
from pipelines.config import ExportConfig
from pipelines.deploy.export import run_export
from pipelines.deploy.onnx_classifier import OnnxClassifier
from tests.pipelines.conftest import command_errors

pytestmark = pytest.mark.slow  # one fine-tune on Ray Train, and a registry
REPO = Path(__file__).resolve().parents[2]
TEXTS = ["the movie was great", "a lovely story with the actors and a plot", "the film was dull",
         "scenes", "the plot was awful and the actors were " + "very " * 40 + "bad"]  # the last is truncated


def export(source, output, **settings) -> dict:
    return run_export(ExportConfig(model=source, output=str(output), **settings), log=lambda _: None)


def torch_logits(directory: str, batch: dict[str, np.ndarray]) -> np.ndarray:
    model = ElectraForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        tensors = {key: torch.from_numpy(value) for key, value in batch.items()}
        return model(tensors["input_ids"], tensors["attention_mask"], tensors["token_type_ids"]).logits.numpy()


def test_fp32_export_gives_pytorchs_logits_on_any_batch_and_sequence_length(fine_tuned, tmp_path):
    import onnx

    source, _ = fine_tuned
    record = export(source, tmp_path / "fp32")
    graph = onnx.load(str(tmp_path / "fp32" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.output] == ["logits"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]

    classifier = OnnxClassifier(str(tmp_path / "fp32"))
    for inputs in (TEXTS[:1], TEXTS):  # batch 1 unpadded, and a padded batch with a truncated row
        batch = classifier.encode(inputs)
        assert np.abs(classifier.logits(inputs) - torch_logits(source, batch)).max() < 1e-4
    assert classifier.encode(TEXTS)["input_ids"].shape[1] == 24  # max_seq_len, as in training

    assert record["precision"] == "fp32" and record["opset"] == 17 and record["max_seq_len"] == 24
    assert record["eval"]["examples"] == 200 and record["eval"]["agreement"] == 1.0
    assert record["eval"]["exported"] == pytest.approx(record["source_metric"]["value"])
    config = json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert {"tokenizer.json", "export.json"} <= set(os.listdir(tmp_path / "fp32"))


def test_int8_export_is_smaller_and_agrees_with_fp32_on_the_eval_set(fine_tuned, tmp_path):
    source, _ = fine_tuned
    fp32 = export(source, tmp_path / "fp32")
    int8 = export(source, tmp_path / "int8", quantize="int8")
    assert int8["precision"] == "int8"
    assert int8["files"]["model.onnx"] < fp32["files"]["model.onnx"]
    assert int8["eval"]["agreement"] >= 0.98
    answers = OnnxClassifier(str(tmp_path / "int8")).predict(TEXTS)
    assert all(set(a["scores"]) == {"negative", "positive"} and a["label"] in a["scores"] for a in answers)


def test_the_export_runs_where_torch_cannot_be_imported(fine_tuned, tmp_path):
    source, _ = fine_tuned
    export(source, tmp_path / "int8", quantize="int8")
    expected = OnnxClassifier(str(tmp_path / "int8")).predict(TEXTS)
    blocker = tmp_path / "no-torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('torch', 'transformers', 'ray', 'mlflow'):\n    sys.modules[name] = None\n")
    script = ("import json, sys\nfrom pipelines.deploy.onnx_classifier import OnnxClassifier\n"
              "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    sys.exit('torch was importable')\n"
              f"print(json.dumps(OnnxClassifier({str(tmp_path / 'int8')!r}).predict({TEXTS!r})))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])})
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout)
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    assert all(a["scores"] == pytest.approx(e["scores"]) for a, e in zip(answers, expected))


def test_export_from_the_champion_alias_of_the_embedded_store_and_of_a_server(fine_tuned, tmp_path, mlflow_server):
    from pipelines.finetune.registry import register

    source, registry = fine_tuned
    record = export("models:/exported@champion", tmp_path / "champion", tracking_uri=registry)
    assert record["source"]["name"] == "exported" and record["source"]["version"] == "1"
    assert record["eval"]["agreement"] == 1.0

    metrics = json.loads(Path(source, "metrics.json").read_text())
    config = json.loads(Path(source, "finetune_config.json").read_text())
    registered = register("exported-served", mlflow_server, source, config, metrics, {"source": source},
                          log=lambda _: None)
    record = export(f"models:/exported-served/{registered['version']}", tmp_path / "served",
                    tracking_uri=mlflow_server)
    assert record["source"]["version"] == registered["version"]
    assert (tmp_path / "served" / "model.onnx").exists()


def test_register_logs_the_export_as_a_version_that_names_its_source(fine_tuned, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    _, registry = fine_tuned
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (./mlruns)
    record = export("models:/exported@champion", tmp_path / "onnx", quantize="int8", tracking_uri=registry,
                    register="exported-onnx")
    version = MlflowClient(tracking_uri=registry).get_model_version("exported-onnx", record["registry"]["version"])
    assert version.tags["electra.source"] == "models:/exported@champion"
    assert version.tags["electra.source_version"] == "1" and version.tags["electra.precision"] == "int8"
    assert version.tags["electra.scores"].startswith(f"accuracy {record['eval']['exported']:.4f} exported")
    mlflow.set_tracking_uri(registry)
    try:
        local = mlflow.artifacts.download_artifacts(f"models:/exported-onnx/{version.version}",
                                                    dst_path=str(tmp_path / "downloaded"))
    finally:
        mlflow.set_tracking_uri(None)
    files = {name for _, _, names in os.walk(local) for name in names}
    assert {"model.onnx", "export.json", "tokenizer.json", "config.json"} <= files
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("model, message", [
    ("{tmp}", "not a fine-tuned model or an export (no finetune_config.json or export.json)"),
    ("models:/exported@no-such-alias", "models:/exported@no-such-alias: not found in the registry"),
    ("models:/never-registered@champion", "models:/never-registered@champion: not found in the registry"),
])
def test_a_source_that_is_not_a_model_exits_2_with_one_line(fine_tuned, tmp_path, capsys, model, message):
    _, registry = fine_tuned
    status = main(["export", "--model", model.format(tmp=tmp_path), "--output", str(tmp_path / "out"),
                   "--tracking-uri", registry])
    errors = command_errors(capsys.readouterr().err)
    assert status == 2 and len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "out" / "model.onnx").exists()
