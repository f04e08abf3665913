"""What serving a fine-tuned classifier over HTTP costs under load: `mlflow models serve` on the registered pyfunc
(what an MLflow user runs by default) beside `electra serve` in PyTorch, ONNX fp32 and ONNX int8, one model
replica each, then int8 on 2 replicas, then 2 replicas with one SIGKILLed halfway through the load.

Every row is the same bounded loop (pipelines/deploy/load.py): --clients concurrent clients, --requests requests
in all, one sentence per request from the fine-tune's eval set, on 127.0.0.1; it reports requests/s, latency
p50 / p99, how many requests the client retried (a 503 or a dropped connection, once) and how many failed.

    python benchmarks/serve_load.py --model FINETUNE_DIR [--clients 16] [--requests 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import ExportConfig, ServeConfig  # noqa: E402
from pipelines.deploy.export import run_export  # noqa: E402
from pipelines.deploy.load import run_load  # noqa: E402
from pipelines.deploy.serve import start_serving, stop_serving  # noqa: E402
from pipelines.ray_runtime import free_loopback_port  # noqa: E402


def eval_sentences(model_dir: str) -> list[list]:
    rows = [json.loads(line) for line in Path(model_dir, "predictions.jsonl").read_text().splitlines() if line]
    return [[[r["text"], r["text_pair"]] if "text_pair" in r else r["text"]] for r in rows]


def mlflow_row(model_dir: str, work: str, payloads: list[list], args) -> dict:
    """`mlflow models serve` (one worker, env-manager local) on the model registered as a pyfunc."""
    from pipelines.finetune.registry import register

    registry = f"sqlite:///{work}/mlflow.db"
    config = json.loads(Path(model_dir, "finetune_config.json").read_text())
    metrics = json.loads(Path(model_dir, "metrics.json").read_text())
    version = register("serve-load", registry, model_dir, config, metrics, {"source": model_dir}, log=lambda _: None)
    port = free_loopback_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry, "OMP_NUM_THREADS": str(args.threads)}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                               f"models:/serve-load/{version['version']}", "--env-manager", "local", "-h", "127.0.0.1",
                               "-p", str(port), "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        text_column = "sentence1" if isinstance(payloads[0][0], list) else "sentence"

        def body(inputs):
            if isinstance(inputs[0], list):
                return {"dataframe_split": {"columns": ["sentence1", "sentence2"], "data": inputs}}
            return {"dataframe_split": {"columns": [text_column], "data": [[text] for text in inputs]}}

        report = run_load(url, payloads, clients=args.clients, requests=args.requests, route="/invocations",
                          body=body)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return {"variant": "mlflow models serve (pyfunc, PyTorch)", "replicas": 1, "report": report}


def electra_row(model: str, label: str, payloads: list[list], args, replicas: int = 1, kill: bool = False) -> dict:
    config = ServeConfig(model=model, port=args.port, replicas=replicas, threads=args.threads,
                         format="torch" if label == "PyTorch" else "auto", name="serve-load")
    served = start_serving(config)
    midway = None
    if kill:
        import ray
        from ray.util.state import list_actors

        pids = [a.pid for a in list_actors(address=ray.get_runtime_context().gcs_address,
                                            filters=[("state", "=", "ALIVE")]) if a.class_name.endswith("ModelReplica")]
        midway = lambda: os.kill(pids[0], signal.SIGKILL)  # noqa: E731
    try:
        report = run_load(served["url"], payloads, clients=args.clients, requests=args.requests, midway=midway)
    finally:
        stop_serving(config)
    variant = f"electra serve ({label})" + (", one replica SIGKILLed halfway" if kill else "")
    return {"variant": variant, "replicas": replicas, "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an `electra finetune` output directory")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per model replica")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--skip-mlflow", action="store_true")
    args = parser.parse_args()
    payloads = eval_sentences(args.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as work:
        exports = {}
        for precision in ("none", "int8"):
            exports[precision] = os.path.join(work, precision)
            run_export(ExportConfig(model=args.model, output=exports[precision], quantize=precision),
                       log=lambda _: None)
        if not args.skip_mlflow:
            rows.append(mlflow_row(args.model, work, payloads, args))
        rows.append(electra_row(args.model, "PyTorch", payloads, args))
        rows.append(electra_row(exports["none"], "ONNX fp32", payloads, args))
        rows.append(electra_row(exports["int8"], "ONNX int8", payloads, args))
        rows.append(electra_row(exports["int8"], "ONNX int8", payloads, args, replicas=2))
        rows.append(electra_row(exports["int8"], "ONNX int8", payloads, args, replicas=2, kill=True))
    print(f"\n{args.clients} clients, {args.requests} requests of one sentence each, {args.threads} thread(s) per "
          f"replica, {os.cpu_count()} CPUs, model {args.model}")
    print("| server | model replicas | requests/s | p50 ms | p99 ms | retried | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        report = row["report"]
        print(f"| {row['variant']} | {row['replicas']} | {len(report.answers) / report.seconds:.0f} | "
              f"{report.percentile_ms(50):.1f} | {report.percentile_ms(99):.1f} | {report.retried} | "
              f"{len(report.failures)} |")


if __name__ == "__main__":
    main()
