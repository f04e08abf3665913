#!/usr/bin/env bash
# The GPU figures of the pretrain issue on one lent GPU, in well under 8 minutes:
# ELECTRA-Base, sequence length 128, bf16, one GPU; eager and torch.compile'd. Needs torch (CUDA) only.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout 180 python3 benchmarks/gpu_step.py --preset base --seq-len 128 --batch 256 --steps 40 "$@"
timeout 300 python3 benchmarks/gpu_step.py --preset base --seq-len 128 --batch 256 --steps 40 --compile "$@"
