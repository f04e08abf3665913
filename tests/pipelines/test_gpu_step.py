"""The GPU check's step script runs here on CPU (a smoke run), so that it does not rot between the rare sessions
that have a GPU: it calls the pipeline's own forward (pipelines.pretrain.step), which the trainer's tests cover."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_step_script_runs_the_pipelines_step_and_prints_its_figures():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_step.py"), "--device", "cpu", "--preset", "tiny",
         "--batch", "4", "--seq-len", "32", "--steps", "2", "--warmup", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ELECTRA-tiny, batch 4 x 32, bf16, eager" in result.stdout
    assert "samples/s" in result.stdout and "tokens/s" in result.stdout
