"""The GPU check's scripts run here on CPU (smoke runs), so that they do not rot between the rare sessions that
have a GPU. The GPU machine has CUDA torch and transformers but no Ray, DeepSpeed or MLflow: the scripts run here
with those imports blocked. They call the pipeline's own step (pipelines.pretrain.step), which the trainer's
tests cover."""

import json
import os
import subprocess
import sys
from pathlib import Path

from pipelines.config import PrepareConfig
from pipelines.prepare import run_prepare
from tests.pipelines.conftest import make_sentences

REPO = Path(__file__).resolve().parents[2]


def as_on_the_gpu_machine(tmp_path) -> dict:
    blocker = tmp_path / "gpu-machine"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('ray', 'deepspeed', 'mlflow'):\n    sys.modules[name] = None  # -> ImportError\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}


def run_script(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env=as_on_the_gpu_machine(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_the_gpu_step_script_runs_the_pipelines_step_and_prints_its_figures(tmp_path):
    result = run_script(tmp_path, "benchmarks/gpu_step.py", "--device", "cpu", "--preset", "tiny", "--batch", "4",
                        "--seq-len", "32", "--steps", "2", "--warmup", "1")
    assert "ELECTRA-tiny, batch 4 x 32, bf16, eager" in result.stdout
    assert "samples/s" in result.stdout and "tokens/s" in result.stdout


def test_the_objectives_comparison_runs_on_a_carried_dataset_and_records_both_objectives(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(make_sentences(300)))
    run_prepare(PrepareConfig(inputs=[str(tmp_path / "corpus.txt")], output=str(tmp_path / "prepared"), seq_len=32,
                              vocab_size=300, executor="local"), log=lambda _: None)
    rows = ["sentence\tlabel"] + [f"{s}\t{int('warm' in s)}" for s in make_sentences(60, seed=7)]
    (tmp_path / "task.tsv").write_text("\n".join(rows) + "\n")
    task = f"toy={tmp_path / 'task.tsv'},{tmp_path / 'task.tsv'},accuracy"
    results = tmp_path / "results.jsonl"
    for objective in ("electra", "mlm"):
        run_script(tmp_path, "benchmarks/recipe_sweep.py", "--device", "cpu", "--data", str(tmp_path / "prepared"),
                   "--task", task, "--labels", "all", "--preset", "tiny", "--objective", objective, "--steps", "4",
                   "--batch", "8", "--seeds", "1", "--ft-epochs", "1", "--ft-min-steps", "2", "--log-every", "2",
                   "--results", str(results), "--cache", str(tmp_path / "cache"), "--tag", f"smoke-{objective}")
    runs = [json.loads(line) for line in results.read_text().splitlines() if '"kind": "run"' in line]
    assert [run["objective"] for run in runs] == ["electra", "mlm"]
    assert all(run["pretrain"]["steps"] == 4 and "toy@all" in run["tasks"] for run in runs)
    assert "prior" in runs[0]["pretrain"]["records"][-1]  # the discriminator's loss beside its prior
