"""Hugging Face Optimum's int8 ONNX export of a fine-tuned classifier, measured as benchmarks/inference.py measures
its own variants: file size, accuracy on the fine-tune's predictions.jsonl, batch-1 p50/p99 (tokenization
included) and batch-32 sentences/s. Prints one JSON line on stdout (everything else goes to stderr).

It runs in Optimum's own environment (benchmarks/optimum_env.sh creates benchmarks/.venv-optimum) and so imports
nothing of this project (no pipelines, no ray); benchmarks/inference.py starts it as a subprocess.

    benchmarks/.venv-optimum/bin/python benchmarks/optimum_variant.py --model FINETUNE_DIR [--threads 1] [--calls 300] [--rounds 5]

What an Optimum user does: ORTModelForSequenceClassification.from_pretrained(dir, export=True), ORTQuantizer with
AutoQuantizationConfig's dynamic int8 config for the CPU's instruction set (avx512_vnni, avx512 or avx2 from
/proc/cpuinfo; per_channel=False, as in Optimum's examples and as `electra export` quantizes), the quantized model
loaded back with onnxruntime SessionOptions(intra_op_num_threads=--threads), and the tokenizer through
AutoTokenizer, return_tensors="pt", straight into the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from inference_timing import eval_set, measure, tokenizer_predict  # numpy only: no project code in this environment


def instruction_set() -> str:
    """The AutoQuantizationConfig constructor for this CPU: the best of avx512_vnni, avx512, avx2."""
    flags = set()
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    raise SystemExit("optimum_variant.py: this CPU has none of avx2 / avx512 / avx512_vnni")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an `electra finetune` output directory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", help="where the exports go (default: a new temporary directory)")
    args = parser.parse_args()

    import onnxruntime
    import optimum
    import torch
    import transformers
    from optimum.onnxruntime import AutoQuantizationConfig, ORTModelForSequenceClassification, ORTQuantizer

    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="inference-optimum-"))
    target = instruction_set()
    with contextlib.redirect_stdout(sys.stderr):  # the exporter's and quantizer's chatter; stdout is the result
        exported = ORTModelForSequenceClassification.from_pretrained(args.model, export=True)
        exported.save_pretrained(work / "fp32")
        config = getattr(AutoQuantizationConfig, target)(is_static=False, per_channel=False)
        ORTQuantizer.from_pretrained(exported).quantize(save_dir=work / "int8", quantization_config=config)
    int8_file = work / "int8" / "model_quantized.onnx"

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    model = ORTModelForSequenceClassification.from_pretrained(work / "int8", file_name=int8_file.name,
                                                              session_options=options,
                                                              provider="CPUExecutionProvider")
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    predict = tokenizer_predict(tokenizer, lambda encoded: model(**encoded).logits, args.model)

    inputs, gold = eval_set(args.model)
    figures = measure(predict, inputs, gold, args.calls, args.rounds)
    print(json.dumps({
        "variant": f"Optimum int8 ({target})", "file_bytes": os.path.getsize(int8_file), **figures,
        "quantization": f"AutoQuantizationConfig.{target}(is_static=False, per_channel=False)",
        "threads": args.threads, "work": str(work),
        "versions": {"optimum": optimum.__version__ if hasattr(optimum, "__version__") else _version("optimum"),
                     "optimum-onnx": _version("optimum-onnx"), "onnxruntime": onnxruntime.__version__,
                     "transformers": transformers.__version__, "torch": torch.__version__},
    }), flush=True)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


if __name__ == "__main__":
    main()
