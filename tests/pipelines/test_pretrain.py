"""`electra pretrain` on a real local Ray with real DeepSpeed (CPU, gloo): training, exports, fault tolerance.

Each test trains the tiny preset for a few steps on 2 CPU workers; the first DeepSpeed start compiles its
shared-memory op once (kept under TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch
import transformers

from electra_core import storage
from pipelines.config import PrepareConfig, PretrainConfig
from pipelines.divergence import TrainingDiverged
from pipelines.errors import InputError
from pipelines.prepare import run_prepare
from pipelines.pretrain import run_pretrain
from pipelines.pretrain import checkpoint as checkpoints
from tests.pipelines.conftest import make_sentences

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

# fp32 unless a test says otherwise: "auto" would make the suite depend on the CPU (bf16 where it has bf16 units).
# ZeRO-2 unless a test says otherwise (the default, stage 0 in fp32, is run by the init_from test).
SETTINGS = dict(preset="tiny", workers=2, global_batch_size=16, micro_batch_size=4, max_steps=12,
                checkpoint_every=4, keep_checkpoints=3, log_every=2, seed=3, record_sample_ids=True, precision="fp32",
                zero_stage=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "corpus.txt").write_text("\n".join(make_sentences(3000)) + "\n")
    run_prepare(PrepareConfig(inputs=[str(root / "corpus.txt")], output=str(root / "prepared"), seq_len=32,
                              vocab_size=400, executor="local"), log=lambda _: None)  # Ray's actors: tested elsewhere
    return str(root / "prepared")


def pretrain(dataset, storage_uri, name, **settings):
    config = PretrainConfig(data=dataset, storage=str(storage_uri), name=name, **{**SETTINGS, **settings})
    logs: list[str] = []
    result = run_pretrain(config, log=logs.append)
    return result, "\n".join(logs)


def final_params(run_uri: str) -> dict[str, torch.Tensor]:
    return checkpoints.latest_good_checkpoint(run_uri).params


def sample_steps(run_uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_text(f"{run_uri}/samples.jsonl").splitlines() if line]


def max_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max((first[k] - second[k]).abs().max().item() for k in first)


def assert_transformers_loads_the_export(result: dict) -> None:
    """transformers loads both exported models, and its discriminator computes what ours does."""
    import electra_core

    discriminator = transformers.ElectraForPreTraining.from_pretrained(result["export"]["discriminator"]).eval()
    tokenizer = transformers.ElectraTokenizerFast.from_pretrained(result["export"]["discriminator"])
    ours = electra_core.ElectraForPreTraining.from_pretrained(result["export"]["discriminator"]).eval()
    encoded = tokenizer("the movie was a quiet delight", return_tensors="pt")
    with torch.no_grad():
        difference = (discriminator(**encoded).logits - ours(**encoded).logits).abs().max().item()
    assert difference <= 1e-4
    assert transformers.ElectraForMaskedLM.from_pretrained(result["export"]["generator"]) is not None


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
    """The reference: one uninterrupted run on 2 workers."""
    storage_root = tmp_path_factory.mktemp("runs")
    result, logs = pretrain(dataset, storage_root, "reference", tracking_uri=f"sqlite:///{storage_root}/mlflow.db")
    return storage_root, result, logs


def test_a_run_trains_logs_checkpoints_and_exports_models_transformers_loads(uninterrupted):
    storage_root, result, logs = uninterrupted
    run = storage_root / "reference"

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(2, 13, 2))
    for key in ("loss", "generator_loss", "generator_accuracy", "discriminator_loss", "discriminator_accuracy",
                "lr", "grad_norm", "tokens_per_s", "samples_per_s"):
        assert key in records[-1]
    assert all(r["grad_norm"] > 0 for r in records)
    assert all(0 < r["discriminator_prior_loss"] < 0.7 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    # newest 3 of the 3 checkpoints (4, 8, 12), each verifiable
    assert [os.path.basename(u) for u in checkpoints.list_checkpoints(str(run))] == [
        checkpoints.directory_name(s) for s in (12, 8, 4)]
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert_transformers_loads_the_export(result)
    assert "global batch 16 = 4 x 2 workers x 2 accumulation" in logs
    # The run says whether its discriminator ended at its prior, from the last quarter of its records.
    check = result["discriminator_against_prior"]
    last = records[-2:]
    assert check["from_step"] == 10 and check["to_step"] == 12
    assert check["discriminator_loss"] == pytest.approx(sum(r["discriminator_loss"] for r in last) / 2)
    assert check["at_prior"] == (check["discriminator_loss"] >= 0.95 * check["prior_loss"])
    assert ("warning: the discriminator's loss stayed at its prior" in logs) == check["at_prior"]


def test_metrics_reach_mlflow_when_a_tracking_uri_is_set(uninterrupted):
    import mlflow

    storage_root, _, _ = uninterrupted
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{storage_root}/mlflow.db")
    experiment = client.get_experiment_by_name("electra-pretrain")
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.electra_run = 'reference'")
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(2, 13, 2))
    assert run.data.params["preset"] == "tiny"


def test_init_from_continues_from_an_exported_pair(dataset, uninterrupted, tmp_path):
    storage_root, result, _ = uninterrupted
    export = os.path.dirname(result["export"]["discriminator"])
    pretrain(dataset, tmp_path, "continued", init_from=export, max_steps=4, record_sample_ids=False,
             zero_stage=None)  # the default: plain data parallelism in fp32 on 2 workers
    first_continued = json.loads((tmp_path / "continued" / "metrics.jsonl").read_text().splitlines()[0])
    first_fresh = json.loads((storage_root / "reference" / "metrics.jsonl").read_text().splitlines()[0])
    assert first_continued["step"] == first_fresh["step"] == 2
    assert first_continued["generator_loss"] < first_fresh["generator_loss"]


def test_exact_resume_and_resume_on_fewer_workers_match_an_uninterrupted_run(dataset, uninterrupted, tmp_path):
    storage_root, _, _ = uninterrupted
    reference = str(storage_root / "reference")

    # Interrupted once at step 6 (after the checkpoint at 4, so steps 5-6 are redone), then resumed.
    pretrain(dataset, tmp_path, "resumed", stop_at_step=6, checkpoint_every=4)
    shutil.rmtree(tmp_path / "resumed" / checkpoints.directory_name(6))
    shutil.copytree(tmp_path / "resumed", tmp_path / "one-worker")
    (tmp_path / "one-worker" / "checkpoint_manager_snapshot.json").unlink(missing_ok=True)
    _, logs = pretrain(dataset, tmp_path, "resumed")
    assert "resuming from the newest good one" in logs

    resumed = str(tmp_path / "resumed")
    assert max_difference(final_params(resumed), final_params(reference)) <= 1e-5
    steps = sample_steps(resumed)
    assert steps == sample_steps(reference)
    ids = [i for step in steps for i in step["ids"]]
    assert [s["step"] for s in steps] == list(range(12))
    assert len(ids) == len(set(ids))  # none repeated (12 x 16 samples, within the first epoch)

    # The same checkpoint continued by 1 worker instead of 2 (the global batch stays 16).
    pretrain(dataset, tmp_path, "one-worker", workers=1)
    assert max_difference(final_params(str(tmp_path / "one-worker")), final_params(reference)) <= 1e-4
    assert sample_steps(str(tmp_path / "one-worker")) == sample_steps(reference)


class WorkerKiller:
    """SIGKILLs one Ray Train worker once the run's checkpoint at `step` is complete, as a node failure would."""

    def __init__(self, run_dir, step: int = 4):
        self.marker = run_dir / checkpoints.directory_name(step) / checkpoints.MARKER
        self.killed = threading.Event()
        self.thread = threading.Thread(target=self._kill_after_the_checkpoint, daemon=True)
        self.thread.start()

    def _kill_after_the_checkpoint(self) -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            if self._checkpoint_is_complete():
                self.checkpoint_written = self.marker.stat().st_mtime_ns
                for process in psutil.process_iter(["cmdline"]):
                    if "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
                        process.send_signal(signal.SIGKILL)
                        self.killed.set()
                        return
            time.sleep(0.2)

    def _checkpoint_is_complete(self) -> bool:
        """Ray Train uploads each rank's files on its own, so rank 0's marker can land before another rank's shard
        does; a checkpoint killed in that window does not verify, and the run rightly resumes from an older one."""
        if not self.marker.exists():
            return False
        try:
            checkpoints.read_verified(str(self.marker.parent)).close()
        except ValueError:
            return False
        return True

    def check(self) -> None:
        """A worker was killed, and the run went on from the checkpoint: a start from scratch would have
        written that checkpoint again (an exact match of the weights alone cannot tell the two apart)."""
        self.thread.join(timeout=1)
        assert self.killed.is_set(), "no worker was found to kill"
        assert self.marker.stat().st_mtime_ns == self.checkpoint_written


def test_rerunning_after_the_driver_was_killed_resumes_from_the_last_checkpoint(dataset, tmp_path):
    import ray

    command = [sys.executable, "-m", "pipelines.cli", "pretrain", "--data", dataset, "--storage", str(tmp_path),
               "--name", "driver", "--preset", "tiny", "--workers", "2", "--global-batch-size", "16",
               "--micro-batch-size", "4", "--max-steps", "40", "--checkpoint-every", "4", "--seed", "3",
               "--zero-stage", "3", "--precision", "fp32",  # fp32 ZeRO-3's checkpoint and restore
               "--address", ray.get_runtime_context().gcs_address]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not checkpoints.list_checkpoints(str(tmp_path / "driver")):
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    taken = checkpoints.latest_good_checkpoint(str(tmp_path / "driver"))
    assert taken is not None and taken.step < 40

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resuming from the newest good one" in rerun.stdout
    assert f"at step {taken.step} (written by 2 workers" in rerun.stdout + rerun.stderr
    # One progress line per logged step (a print in a Ray Train worker came out twice).
    assert len(re.findall(r"step +40 +loss", rerun.stdout + rerun.stderr)) == 1
    assert json.loads((tmp_path / "driver" / "result.json").read_text())["final_metrics"]["step"] == 40


def test_checkpoints_and_exports_on_s3(dataset, s3_bucket):
    result, _ = pretrain(dataset, f"{s3_bucket}/runs", "on-s3", max_steps=8, record_sample_ids=False, zero_stage=1)
    run = f"{s3_bucket}/runs/on-s3"
    assert [u.rsplit("/", 1)[-1] for u in checkpoints.list_checkpoints(run)] == [
        checkpoints.directory_name(8), checkpoints.directory_name(4)]
    assert checkpoints.latest_good_checkpoint(run).step == 8
    assert storage.exists(f"{result['export']['discriminator']}/model.safetensors")
    assert json.loads(storage.read_text(f"{run}/result.json"))["final_metrics"]["step"] == 8


def test_a_dataset_without_a_manifest_is_refused_before_training(tmp_path):
    (tmp_path / "half-written").mkdir()
    with pytest.raises(InputError, match="no _manifest.json"):
        run_pretrain(PretrainConfig(data=str(tmp_path / "half-written"), storage=str(tmp_path), name="x"))


@pytest.mark.parametrize("damage", ["truncated shard", "deleted shards", "garbage tokenizer.json"])
def test_a_damaged_dataset_exits_2_naming_what_is_damaged_before_any_worker_starts(
        dataset, tmp_path, capsys, damage):
    from pipelines.cli import main
    from tests.pipelines.conftest import command_errors

    copy = tmp_path / "prepared"
    shutil.copytree(dataset, copy)
    shards = sorted((copy / "shards").glob("*.parquet"))
    if damage == "truncated shard":
        shards[0].write_bytes(shards[0].read_bytes()[:300])
        expected = f"{shards[0].name}: 300 bytes where the manifest lists"
    elif damage == "deleted shards":
        for shard in shards:
            shard.unlink()
        expected = f"missing ({len(shards)} of {len(shards)} shards damaged); run electra prepare"
    else:
        (copy / "tokenizer.json").write_text("{not json")
        expected = "tokenizer.json: not the tokenizer the manifest lists"
    started = time.perf_counter()
    status = main(["pretrain", "--data", str(copy), "--storage", str(tmp_path / "runs"), "--name", "damaged",
                   "--preset", "tiny", "--max-steps", "2"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and expected in error
    assert time.perf_counter() - started < 10 and not (tmp_path / "runs" / "damaged").exists()


def test_sequences_longer_than_the_models_positions_exit_2_before_any_worker_starts(dataset, tmp_path, capsys):
    from pipelines.cli import main
    from tests.pipelines.conftest import command_errors

    status = main(["pretrain", "--data", dataset, "--storage", str(tmp_path), "--name", "short", "--preset", "tiny",
                   "--max-steps", "2", "--set", "model={max_position_embeddings: 16}"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and "sequences of 32 tokens do not fit the model's 16 positions (pretrain.model)" in error
    assert not (tmp_path / "short").exists()


def test_a_storage_path_that_is_a_file_exits_2_before_any_worker_starts(dataset, tmp_path, capsys):
    from pipelines.cli import main
    from tests.pipelines.conftest import command_errors

    (tmp_path / "runs").write_text("a file")
    status = main(["pretrain", "--data", dataset, "--storage", str(tmp_path / "runs"), "--name", "r",
                   "--preset", "tiny", "--max-steps", "2"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and "runs/r: the run's directory (--storage/--name) cannot be written" in error


def test_a_diverging_run_on_two_zero_2_workers_stops_and_leaves_only_finite_checkpoints(dataset, tmp_path):
    # Two workers run ZeRO-2, where DeepSpeed skips a step with a non-finite gradient norm itself (one worker
    # runs stage 0 and the loop skips it: tests/pipelines/test_run.py).
    with pytest.raises(TrainingDiverged, match=r"by step 6 .*resume from step 4"):
        pretrain(dataset, tmp_path, "diverging", lr=1e6, warmup_steps=1, max_nonfinite_steps=4)
    run = tmp_path / "diverging"
    assert not (run / "result.json").exists() and not (run / "export").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [2, 4, 6] and sum(r["skipped_steps"] for r in records) == 5
    assert [c.rsplit("/", 1)[-1] for c in checkpoints.list_checkpoints(str(run))] == ["checkpoint_000000004"]
    assert all(torch.isfinite(p).all() for p in final_params(str(run)).values())


def test_ctrl_c_is_one_line_and_exit_130_and_leaves_only_complete_checkpoints(dataset, tmp_path):
    from tests.pipelines.conftest import command_errors

    # As a user runs it in a terminal: its own local Ray, and Ctrl-C reaching the whole process group. (Resuming
    # is the driver-killed test's; pruning what an interrupted run leaves, tests/pipelines/test_checkpoint.py.)
    command = [sys.executable, "-m", "pipelines.cli", "pretrain", "--data", dataset, "--storage", str(tmp_path),
               "--name", "interrupted", "--preset", "tiny", "--global-batch-size", "8", "--micro-batch-size", "8",
               "--max-steps", "150", "--checkpoint-every", "10", "--log-every", "10"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = tmp_path / "interrupted"
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    try:
        deadline = time.time() + 300
        newest = [str(run / "checkpoint_000000030")]
        while time.time() < deadline and checkpoints.list_checkpoints(str(run))[:1] != newest:
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130 and "Traceback" not in stderr
    assert command_errors(stderr) == ["electra pretrain: interrupted; run the same command to continue"]
    assert not (run / "result.json").exists()  # it stopped (150 steps take longer than its Ray's shutdown)
    assert checkpoints.latest_good_checkpoint(str(run)).step >= 30


@pytest.mark.parametrize("flags, expected", [
    (["--workers", "64"], "pretrain.workers 64 x pretrain.cpus_per_worker 1 need 64 CPUs; this machine has"),
    (["--gpus-per-worker", "1"], "pretrain.workers 1 x pretrain.gpus_per_worker 1 need 1 GPU; this machine has 0"),
])
def test_more_workers_than_the_local_ray_holds_exit_2_instead_of_waiting_forever(
        dataset, tmp_path, capsys, flags, expected):
    from pipelines.cli import main
    from tests.pipelines.conftest import command_errors

    if "--gpus-per-worker" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    started = time.perf_counter()
    status = main(["pretrain", "--data", dataset, "--storage", str(tmp_path), "--name", "big", "--preset", "tiny",
                   "--max-steps", "2", "--global-batch-size", "64", "--micro-batch-size", "1", *flags])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and expected in error and time.perf_counter() - started < 10


# --- bf16 and the ZeRO stages, as GPU clusters run them, on CPU workers -----------------------------------
# (fp32 ZeRO-2's restore is exact in test_exact_resume...; a killed worker is the bf16 tests' below.)

@pytest.fixture(scope="module")
def bf16_zero3(dataset, tmp_path_factory):
    """The bf16 reference: one uninterrupted run on 2 workers at ZeRO-3 (parameters sharded too)."""
    storage_root = tmp_path_factory.mktemp("bf16")
    result, logs = pretrain(dataset, storage_root, "reference", precision="bf16", zero_stage=3,
                            record_sample_ids=False)
    return storage_root, result, logs


# Measured on these 12 steps: bf16 ZeRO-2 against ZeRO-3 differ by at most 1.8e-3 in a weight, bf16 against
# fp32 by 2.1e-3, DeepSpeed's BF16 optimizer (one worker, or ZeRO-1) against ZeRO-3 by 7e-3 (Adam's step is
# ~lr wherever a gradient is small, and bf16 rounding flips its sign there); fp32 ZeRO-2 against ZeRO-3: 6e-8.
BF16_TOLERANCE = 1e-2


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_zero_runs_survive_a_killed_worker_and_export_what_transformers_loads(dataset, bf16_zero3, tmp_path,
                                                                                     stage):
    storage_root, reference, logs = bf16_zero3
    assert "ZeRO-3, bf16" in logs
    killer = WorkerKiller(tmp_path / "killed")
    result, _ = pretrain(dataset, tmp_path, "killed", precision="bf16", zero_stage=stage, max_failures=2,
                         record_sample_ids=False)
    killer.check()
    assert result["final_metrics"]["step"] == 12
    difference = max_difference(final_params(str(tmp_path / "killed")), final_params(str(storage_root / "reference")))
    # The same stage, restarted from its checkpoint, repeats the uninterrupted run; another stage is as close
    # as bf16 rounding allows.
    assert difference <= (1e-6 if stage == 3 else BF16_TOLERANCE)
    assert_transformers_loads_the_export(result)


def test_a_bf16_zero3_checkpoint_of_2_workers_resumes_on_1(dataset, bf16_zero3, tmp_path):
    storage_root, _, _ = bf16_zero3
    shutil.copytree(storage_root / "reference", tmp_path / "one-worker")
    (tmp_path / "one-worker" / "checkpoint_manager_snapshot.json").unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "one-worker" / checkpoints.directory_name(12))
    (tmp_path / "one-worker" / "result.json").unlink()
    result, logs = pretrain(dataset, tmp_path, "one-worker", workers=1, precision="bf16", zero_stage=3,
                            record_sample_ids=False)
    assert "ZeRO-1, bf16" in logs  # one rank has nothing to shard; bf16 keeps DeepSpeed's BF16 optimizer
    assert "resuming from the newest good one" in logs
    assert result["final_metrics"]["step"] == 12
    run = str(tmp_path / "one-worker")
    # Steps 9-12 ran on 1 worker from the 2 workers' checkpoint at 8, which a fresh start would have rewritten.
    assert checkpoints.read_verified(f"{run}/{checkpoints.directory_name(8)}").trainer_state["world_size"] == 2
    resumed = checkpoints.latest_good_checkpoint(run)
    assert resumed.trainer_state["world_size"] == 1 and resumed.trainer_state["optimizer_step"] == 12
    assert max_difference(resumed.params, final_params(str(storage_root / "reference"))) <= BF16_TOLERANCE


# --- the trainer without Ray ----------------------------------------------------------------------------------

def without_ray(tmp_path) -> dict:
    """An environment in which `import ray` fails (a sitecustomize that blocks it), as on a machine without Ray."""
    blocker = tmp_path / "no-ray"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None  # import ray -> ImportError\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.getcwd()])}


def local_command(dataset, storage_root, name: str, workers: int) -> list[str]:
    flags = {"data": dataset, "storage": str(storage_root), "name": name, **SETTINGS, "workers": workers,
             "launcher": "local"}
    command = ["-m", "pipelines.cli", "pretrain"]
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    return command


@pytest.mark.parametrize("processes", [1, 2])
def test_the_trainer_runs_without_ray_alone_or_under_torchrun_and_trains_what_ray_train_does(
        dataset, uninterrupted, tmp_path, processes):
    storage_root, _, _ = uninterrupted
    command = local_command(dataset, tmp_path, "local", processes)
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *command]
    done = subprocess.run([sys.executable, *command], env=without_ray(tmp_path), capture_output=True, text=True,
                          timeout=600)
    # torchrun's own traceback fills the last 3,000 characters; what a failing rank printed comes before it
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-12000:]
    output = done.stdout + done.stderr
    assert f"in {processes} process" in output and "without Ray" in output
    assert len(re.findall(r"step +12 +loss", output)) == 1  # rank 0 speaks for the run
    run = str(tmp_path / "local")
    assert [os.path.basename(u) for u in checkpoints.list_checkpoints(run)] == [
        checkpoints.directory_name(s) for s in (12, 8, 4)]
    assert sample_steps(run) == sample_steps(str(storage_root / "reference"))
    # The same world size and stage repeat Ray Train's run exactly; one process (stage 0) is within fp32 rounding.
    tolerance = 1e-6 if processes == 2 else 1e-4
    assert max_difference(final_params(run), final_params(str(storage_root / "reference"))) <= tolerance
    assert json.loads((tmp_path / "local" / "result.json").read_text())["final_metrics"]["step"] == 12


def test_a_local_launch_with_a_world_size_other_than_workers_exits_2(dataset, tmp_path):
    done = subprocess.run([sys.executable, *local_command(dataset, tmp_path, "mismatch", 2)],
                          env=without_ray(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "pretrain.workers is 2 but this launch has 1 process(es); start it with torchrun --nproc-per-node 2" \
        in done.stderr
