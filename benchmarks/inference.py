"""What serving the fine-tuned model costs: transformers' eager fp32 model (what a user runs by default) beside
this project's PyTorch model and its ONNX exports (fp32, int8), same weights, same threads, each variant in a fresh process of its own.

For each variant: model file size, accuracy on the fine-tune's own eval set (its predictions.jsonl), latency of
one sentence at a time (p50 / p99 over --calls calls, tokenization included) and sentences/s at batch 32 (the
median of --rounds rounds; benchmarks/inference_timing.py). Each variant runs in a process that holds only it:
measured in one process, the torch variants' thread pools competed with ONNX Runtime's for the cores, and the
same int8 file ran 1.9x slower at 2 threads than in a process of its own.
Hugging Face Optimum's int8 export (ORTModelForSequenceClassification + ORTQuantizer, dynamic int8 for this CPU's
instruction set) is the last row: Optimum pins versions of its own, so benchmarks/optimum_variant.py measures it in
benchmarks/.venv-optimum (create it with `bash benchmarks/optimum_env.sh`; without it the row is skipped).

    python benchmarks/inference.py --model FINETUNE_DIR [--threads 1] [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from inference_timing import eval_set, measure, tokenizer_predict

OPTIMUM_PYTHON = Path(__file__).parent / ".venv-optimum" / "bin" / "python"
TORCH_VARIANTS = ("transformers eager fp32", "ours, PyTorch fp32")
ONNX_VARIANTS = {"ONNX fp32": "none", "ONNX int8": "int8"}


def torch_predict(name: str, model_dir: str, threads: int):
    import torch
    import transformers

    from electra_core import ElectraForSequenceClassification

    torch.set_num_threads(threads)
    classes = transformers.ElectraForSequenceClassification if name.startswith("transformers") \
        else ElectraForSequenceClassification
    model = classes.from_pretrained(model_dir).eval()
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(model_dir)

    def logits_of(encoded):
        with torch.no_grad():
            return model(**encoded).logits

    return tokenizer_predict(tokenizer, logits_of, model_dir)


def onnx_predict(export_dir: str, threads: int):
    from pipelines.deploy.onnx_classifier import OnnxClassifier

    classifier = OnnxClassifier(export_dir, threads=threads)
    return lambda batch: [answer["label"] for answer in classifier.predict(batch)]


def measure_one(args) -> None:
    """The child process: measure one variant and print its figures as one JSON line."""
    if args.variant in TORCH_VARIANTS:
        predict = torch_predict(args.variant, args.model, args.threads)
    else:
        predict = onnx_predict(os.path.join(args.work, ONNX_VARIANTS[args.variant]), args.threads)
    inputs, gold = eval_set(args.model)
    print(json.dumps(measure(predict, inputs, gold, args.calls, args.rounds)), flush=True)


def in_fresh_process(command: list[str], what: str) -> dict:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:  # a child's own log (exporters, quantizers) is shown only when it failed
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an `electra finetune` output directory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=300, help="batch-1 calls per variant")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of batch-32 calls; the median is reported")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child process that measures one variant
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return measure_one(args)

    from pipelines.config import ExportConfig
    from pipelines.deploy.export import run_export

    work = tempfile.mkdtemp(prefix="inference-")
    safetensors = os.path.getsize(Path(args.model, "model.safetensors"))
    sizes = dict.fromkeys(TORCH_VARIANTS, safetensors)
    for name, quantize in ONNX_VARIANTS.items():
        record = run_export(ExportConfig(model=args.model, output=os.path.join(work, quantize), quantize=quantize),
                            log=lambda _: None)
        sizes[name] = record["files"]["model.onnx"]
    common = ["--model", args.model, "--threads", str(args.threads), "--calls", str(args.calls),
              "--rounds", str(args.rounds)]

    print(f"{args.model}: {len(eval_set(args.model)[0])} eval examples, {args.threads} thread(s), batch-1 over "
          f"{args.calls} calls, batch 32: median of {args.rounds} rounds; each variant in a fresh process")
    print(f"{'variant':28}{'file MB':>9}{'accuracy':>10}{'p50 ms':>9}{'p99 ms':>9}{'batch 32/s':>12}"
          f"{'(min-max)':>14}{'x base p50':>12}")
    base = None

    def row(name: str, size: int, figures: dict) -> None:
        nonlocal base
        base = base or figures["p50_ms"]
        low, high = figures["batch32_spread"]
        print(f"{name:28}{size / 2**20:>9.2f}{figures['accuracy']:>10.4f}{figures['p50_ms']:>9.2f}"
              f"{figures['p99_ms']:>9.2f}{figures['batch32_per_s']:>12,.0f}{f'({low:,.0f}-{high:,.0f})':>14}"
              f"{base / figures['p50_ms']:>12.2f}", flush=True)

    for name in sizes:
        row(name, sizes[name], in_fresh_process([sys.executable, __file__, "--variant", name, "--work", work, *common],
                                                name))
    if not OPTIMUM_PYTHON.exists():
        print("Optimum int8: skipped; create its environment with `bash benchmarks/optimum_env.sh`")
        return
    script = Path(__file__).with_name("optimum_variant.py")
    optimum = in_fresh_process([str(OPTIMUM_PYTHON), str(script), *common], script.name)
    row(optimum["variant"], optimum["file_bytes"], optimum)
    print(f"Optimum: {optimum['quantization']}; " + ", ".join(f"{k} {v}" for k, v in optimum["versions"].items()))


if __name__ == "__main__":
    main()
