"""What serving the fine-tuned model costs: transformers' eager fp32 model (what a user runs by default) beside
this project's PyTorch model and its ONNX exports (fp32, int8), same weights, same threads, one process.

For each variant: model file size, accuracy on the fine-tune's own eval set (its predictions.jsonl), latency of
one sentence at a time (p50 / p99 over --calls calls, tokenization included) and sentences/s at batch 32.
Hugging Face Optimum's int8 export (ORTModelForSequenceClassification + ORTQuantizer, dynamic int8 for this CPU's
instruction set) is the last row: Optimum pins versions of its own, so benchmarks/optimum_variant.py measures it in
benchmarks/.venv-optimum (create it with `bash benchmarks/optimum_env.sh`; without it the row is skipped).

    python benchmarks/inference.py --model FINETUNE_DIR [--threads 1] [--calls 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

OPTIMUM_PYTHON = Path(__file__).parent / ".venv-optimum" / "bin" / "python"


def eval_set(model_dir: str) -> tuple[list, list[str]]:
    rows = [json.loads(line) for line in Path(model_dir, "predictions.jsonl").read_text().splitlines() if line]
    inputs = [[r["text"], r["text_pair"]] if "text_pair" in r else r["text"] for r in rows]
    return inputs, [str(r["label"]) for r in rows]


class TorchVariant:
    def __init__(self, model, encode, labels: list[str]):
        self.model, self.encode, self.labels = model, encode, labels

    def predict(self, inputs: list) -> list[str]:
        import torch

        with torch.no_grad():
            logits = self.model(**self.encode(inputs)).logits
        return [self.labels[i] for i in logits.argmax(-1).tolist()]


class OnnxVariant:
    def __init__(self, directory: str, threads: int):
        from pipelines.deploy.onnx_classifier import OnnxClassifier

        self.classifier = OnnxClassifier(directory, threads=threads)

    def predict(self, inputs: list) -> list[str]:
        return [answer["label"] for answer in self.classifier.predict(inputs)]


def measure(variant, inputs: list, gold: list[str], calls: int) -> dict:
    predicted = [label for start in range(0, len(inputs), 32) for label in variant.predict(inputs[start: start + 32])]
    accuracy = float(np.mean([p == g for p, g in zip(predicted, gold)]))
    for text in inputs[:10]:  # warm-up
        variant.predict([text])
    latencies = []
    for i in range(calls):
        started = time.perf_counter()
        variant.predict([inputs[i % len(inputs)]])
        latencies.append(time.perf_counter() - started)
    batches = [inputs[(i * 32) % len(inputs):][:32] for i in range(max(1, calls // 32))]
    started = time.perf_counter()
    count = 0
    for batch in batches:
        variant.predict(batch)
        count += len(batch)
    throughput = count / (time.perf_counter() - started)
    return {"accuracy": accuracy, "p50_ms": float(np.percentile(latencies, 50) * 1000),
            "p99_ms": float(np.percentile(latencies, 99) * 1000), "batch32_per_s": throughput}


def optimum_int8(model_dir: str, threads: int, calls: int) -> dict | None:
    """Optimum's int8 export measured by benchmarks/optimum_variant.py in Optimum's environment: its JSON line."""
    if not OPTIMUM_PYTHON.exists():
        print("Optimum int8: skipped; create its environment with `bash benchmarks/optimum_env.sh`")
        return None
    script = Path(__file__).with_name("optimum_variant.py")
    result = subprocess.run([str(OPTIMUM_PYTHON), str(script), "--model", model_dir, "--threads", str(threads),
                             "--calls", str(calls)], capture_output=True, text=True)
    if result.returncode:  # its export's and quantizer's log is shown only when it failed
        raise SystemExit(f"{script.name} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an `electra finetune` output directory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()

    import torch
    import transformers

    from electra_core import ElectraForSequenceClassification
    from pipelines.config import ExportConfig
    from pipelines.deploy.export import run_export

    torch.set_num_threads(args.threads)
    inputs, gold = eval_set(args.model)
    id2label = json.loads(Path(args.model, "config.json").read_text())["id2label"]
    labels = [id2label[str(i)] for i in range(len(id2label))]
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(args.model)
    max_len = json.loads(Path(args.model, "finetune_config.json").read_text())["max_seq_len"]

    def encode(batch):
        pairs = [tuple(item) if isinstance(item, list) else item for item in batch]
        first = [p[0] if isinstance(p, tuple) else p for p in pairs]
        second = [p[1] for p in pairs] if isinstance(pairs[0], tuple) else None
        return dict(tokenizer(first, second, padding=True, truncation=True, max_length=max_len, return_tensors="pt"))

    safetensors = os.path.getsize(Path(args.model, "model.safetensors"))
    variants = {
        "transformers eager fp32": (TorchVariant(transformers.ElectraForSequenceClassification.from_pretrained(
            args.model).eval(), encode, labels), safetensors),
        "ours, PyTorch fp32": (TorchVariant(ElectraForSequenceClassification.from_pretrained(args.model).eval(),
                                            encode, labels), safetensors),
    }
    work = tempfile.mkdtemp(prefix="inference-")
    for quantize in ("none", "int8"):
        output = os.path.join(work, quantize)
        record = run_export(ExportConfig(model=args.model, output=output, quantize=quantize), log=lambda _: None)
        variants[f"ONNX {record['precision']}"] = (OnnxVariant(output, args.threads), record["files"]["model.onnx"])

    print(f"{args.model}: {len(inputs)} eval examples, {args.threads} thread(s), batch-1 over {args.calls} calls")
    print(f"{'variant':26}{'file MB':>9}{'accuracy':>10}{'p50 ms':>9}{'p99 ms':>9}{'batch 32/s':>12}{'x base p50':>12}")
    base = None

    def row(name: str, size: int, figures: dict) -> None:
        nonlocal base
        base = base or figures["p50_ms"]
        print(f"{name:26}{size / 2**20:>9.2f}{figures['accuracy']:>10.4f}{figures['p50_ms']:>9.2f}"
              f"{figures['p99_ms']:>9.2f}{figures['batch32_per_s']:>12,.0f}{base / figures['p50_ms']:>12.2f}",
              flush=True)

    for name, (variant, size) in variants.items():
        row(name, size, measure(variant, inputs, gold, args.calls))
    optimum = optimum_int8(args.model, args.threads, args.calls)
    if optimum:
        row(optimum["variant"], optimum["file_bytes"], optimum)
        print(f"Optimum: {optimum['quantization']}; " + ", ".join(f"{k} {v}" for k, v in optimum["versions"].items()))


if __name__ == "__main__":
    main()
