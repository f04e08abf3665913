#!/usr/bin/env bash
# The GPU figures of the pretrain issue on one lent GPU, in about 8 minutes. Needs CUDA torch (and, for part b,
# the data of benchmarks/gpu_check_data.py, carried as benchmarks/gpu_data: the GPU machine has no Ray).
#  (a) the pipeline's own step, ELECTRA-Base, sequence length 128, bf16, one GPU; eager and torch.compile'd;
#  (b) ELECTRA against masked LM, Small preset, the same minutes of pretraining each (GPU_CHECK_MINUTES, default
#      2) on the review corpus, each fine-tuned on SST-2 (200 and 2,000 labels) beside a scratch baseline, 3 seeds;
#      the discriminator's loss against its prior is in each run's records. Results: $OUT (or /tmp)/gpu_sweep.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
results="${OUT:-/tmp}/gpu_sweep.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout 180 python3 benchmarks/gpu_step.py --preset base --seq-len 128 --batch 256 --steps 40 "$@"
timeout 300 python3 benchmarks/gpu_step.py --preset base --seq-len 128 --batch 256 --steps 40 --compile "$@"
if [ -f benchmarks/gpu_data/prepared/_manifest.json ]; then
  for objective in electra mlm; do
    timeout 420 python3 benchmarks/recipe_sweep.py --device cuda --precision bf16 --data benchmarks/gpu_data/prepared \
      --task sst2=benchmarks/gpu_data/sst2/train.tsv,benchmarks/gpu_data/sst2/dev.tsv,accuracy --labels 200,2000 \
      --preset small --objective "$objective" --minutes "${GPU_CHECK_MINUTES:-2}" --batch 128 --lr 1e-3 \
      --ft-epochs 2 --seeds 3 --threads 8 --log-every 200 --results "$results" --tag "gpu-$objective-small" \
      --cache /tmp/recipe-sweep || echo "part (b), $objective: failed or ran out of time"
  done
else
  echo "part (b) skipped: no benchmarks/gpu_data (run benchmarks/gpu_check_data.py here and carry it)"
fi
