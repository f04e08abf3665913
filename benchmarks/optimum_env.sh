#!/usr/bin/env bash
# The virtual environment benchmarks/inference.py runs Hugging Face Optimum's int8 export in
# (benchmarks/optimum_variant.py). Optimum has pins of its own (optimum-onnx 0.1.0 wants optimum 2.1 and a
# transformers 4.x, this project runs transformers 5), so it lives apart from the project's .venv.
#   bash benchmarks/optimum_env.sh        # creates benchmarks/.venv-optimum; does nothing when it is complete
set -euo pipefail

cd "$(dirname "$0")"
VENV=.venv-optimum
STAMP=$VENV/.installed
if [[ -f $STAMP ]]; then
    echo "$VENV: already installed ($(cat "$STAMP"))"
    exit 0
fi
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv "$VENV"
# torch first and pinned: unpinned, the resolver would pull a multi-GB CUDA build.
"$VENV/bin/pip" install --quiet torch==2.13.0
# The same onnxruntime as the project's .venv, so that both exports run on the same runtime.
"$VENV/bin/pip" install --quiet "optimum-onnx[onnxruntime]==0.1.0" optimum==2.1.0 onnxruntime==1.32.0 \
    onnx==1.23.2 transformers==4.57.6 tokenizers==0.22.2 numpy==2.4.6
"$VENV/bin/python" -c "import optimum.onnxruntime, onnxruntime, transformers"
echo "optimum 2.1.0, optimum-onnx 0.1.0, onnxruntime 1.32.0, transformers 4.57.6" > "$STAMP"
echo "$VENV: installed ($(cat "$STAMP"))"
