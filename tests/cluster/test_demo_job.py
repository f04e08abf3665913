"""The demo pipeline as users submit it to a running cluster: `ray start --head` on 127.0.0.1, then
`ray job submit --working-dir . -- electra run --config configs/demo.yaml` through the Ray Jobs API."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_the_demo_job_succeeds_on_a_running_cluster_and_registers_a_model(ray_head_cluster, tmp_path):
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    runtime_env["env_vars"] = {
        **runtime_env.get("env_vars", {}),
        "HF_HUB_OFFLINE": "1",
        # the Makefile's cache: DeepSpeed's CPU op compiled once is reused by the job's workers
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                               str(Path.home() / ".cache/torch_extensions/electra-ray")),
    }
    root = tmp_path / "demo"  # absolute: the job runs in a temporary copy of the working directory
    entrypoint = (f"electra run --config configs/demo.yaml --set pipeline.root={root} "
                  "--set pretrain.max_steps=40 --set pretrain.checkpoint_every=20 --set pretrain.log_every=20 "
                  "--set finetune.epochs=1 --set finetune.trials=1")  # one trial and its baseline: 2 fine-tunes, not 6

    run = ray_head_cluster.submit_and_wait(entrypoint, runtime_env=runtime_env, timeout_s=600)

    assert "electra run: finished" in run.logs
    assert "joining the Ray cluster" in run.logs  # the job's driver used the cluster, not a Ray of its own
    assert (root / "runs" / "electra-demo" / "export" / "discriminator" / "model.safetensors").exists()
    assert (root / "runs" / "electra-demo" / "loss_curve.png").exists()

    import mlflow

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/electra-demo@champion")
        predictions = model.predict(pd.DataFrame({"sentence": ["Return the number of items in the queue.",
                                                               "A queue of items shared between threads."]}))
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None) if saved is None else os.environ.update(MLFLOW_TRACKING_URI=saved)
    assert list(predictions["label"]) and set(predictions["label"]) <= {"function", "class"}
    assert {"function", "class"} <= set(predictions.columns)
