"""`electra run` as a scheduled job: the first run does everything, a re-run with no new data trains nothing,
new data continues pretraining from the checkpoint and registers a new version; two runs never overlap."""

import json
import time

import mlflow
import pytest
from mlflow import MlflowClient

from electra_core import storage
from pipelines.cli import main
from pipelines.lease import LEASE_HELD_EXIT_STATUS, Lease
from pipelines.run import run_pipeline
from tests.pipelines.conftest import command_errors, make_sentences

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def write_corpus_file(directory, name: str, seed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("\n\n".join(" ".join(make_sentences(6, seed=seed * 100 + i)) for i in range(60)))


def write_task(path, count: int, seed: int) -> None:
    rows = [{"sentence": s, "label": "warm" if "warm" in s else "cold"} for s in make_sentences(count, seed=seed)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def pipeline_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the embedded registry under the root is under test
    corpus = tmp_path / "corpus"
    write_corpus_file(corpus, "a.txt", seed=1)
    write_corpus_file(corpus, "b.txt", seed=2)
    write_task(tmp_path / "train.jsonl", 64, seed=3)
    write_task(tmp_path / "eval.jsonl", 32, seed=4)
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"""
pipeline: {{root: {tmp_path / 'root'}, name: scheduled, retrain: continue, retrain_steps: 2}}
prepare: {{inputs: [{corpus}], vocab_size: 300, seq_len: 32, workers: 1}}
pretrain: {{preset: tiny, workers: 1, global_batch_size: 8, micro_batch_size: 8, max_steps: 4, checkpoint_every: 2,
           log_every: 2}}
finetune: {{train: {tmp_path / 'train.jsonl'}, eval: {tmp_path / 'eval.jsonl'}, epochs: 1, batch_size: 8,
           launcher: local}}
""")  # fine-tunes in the driver: the demo-job test runs `electra run`'s fine-tune on Ray Train
    return config


def test_scheduled_runs_skip_unchanged_stages_and_continue_on_new_data(pipeline_file, tmp_path):
    root = tmp_path / "root"
    lines: list[str] = []
    first = run_pipeline(str(pipeline_file), log=lines.append)
    assert not any(first[stage]["skipped"] for stage in ("data", "pretrain", "finetune"))
    # Every run fine-tunes random weights of the same shape beside the pretrained model and reports the gain.
    tuned = first["finetune"]
    assert tuned["baseline"] == "scratch" and tuned["pretraining_gain"] == pytest.approx(
        tuned["value"] - tuned["baseline_value"])
    assert f"gain         {tuned['pretraining_gain']:+.4f} accuracy" in lines[-1]
    assert first["pretrain"]["steps"] == 4 and first["registry"]["version"] == "1"
    assert "champion" in first["registry"]["decision"]
    assert (root / "mlflow" / "mlflow.db").exists()  # the embedded registry lives with the outputs

    # No new data: nothing is trained, nothing registered, and it takes seconds.
    started = time.perf_counter()
    second = run_pipeline(str(pipeline_file), log=lambda *_: None)
    assert time.perf_counter() - started < 15
    assert all(second[stage]["skipped"] for stage in ("data", "pretrain", "finetune"))
    assert second["registry"]["version"] == "1"

    # A new input file: tokenized alone, pretraining continues from step 4 on the new dataset, a new version.
    write_corpus_file(tmp_path / "corpus", "c.txt", seed=5)
    third = run_pipeline(str(pipeline_file), log=lambda *_: None)
    assert not third["data"]["skipped"]
    assert third["data"]["dataset_fingerprint"] != first["data"]["dataset_fingerprint"]
    manifest = json.loads((root / "data" / "_manifest.json").read_text())
    assert manifest["runs"][-1]["files_added"] == [str(tmp_path / "corpus" / "c.txt")]
    assert third["pretrain"]["steps"] == 6 and third["pretrain"]["run"] == first["pretrain"]["run"]
    result = json.loads((root / "runs" / "scheduled" / "result.json").read_text())
    assert result["data_start_step"] == 4  # the new data was read from its first sample at step 4
    assert result["dataset_fingerprint"] == third["data"]["dataset_fingerprint"]
    records = [json.loads(line) for line in (root / "runs" / "scheduled" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [2, 4, 6]  # one history: the continuation follows the first run's
    assert all(r["grad_norm"] > 0 for r in records)  # one worker runs ZeRO stage 0: the norm is our own
    assert third["finetune"]["output"] != first["finetune"]["output"]
    assert third["registry"]["version"] == "2"
    client = MlflowClient(tracking_uri=third["registry"]["tracking_uri"])
    champion = str(client.get_model_version_by_alias("scheduled", "champion").version)
    expected = "2" if third["finetune"]["value"] > first["finetune"]["value"] else "1"
    assert champion == expected

    last_run = json.loads((root / "last_run.json").read_text())
    assert last_run["registry"]["version"] == "2" and last_run["config"]["pretrain"]["max_steps"] == 4
    assert last_run["finetune"]["pretraining_gain"] == third["finetune"]["pretraining_gain"]
    mlflow.set_tracking_uri(None)


def test_a_second_run_while_one_holds_the_lease_is_refused(pipeline_file, tmp_path, capsys):
    with Lease(str(tmp_path / "root"), ttl_s=60, log=lambda *_: None):
        assert main(["run", "--config", str(pipeline_file)]) == LEASE_HELD_EXIT_STATUS
    (error,) = command_errors(capsys.readouterr().err)
    assert "another run of this pipeline is in progress" in error
    assert not storage.exists(str(tmp_path / "root" / "data"))  # it did no work


@pytest.mark.parametrize("key", ["finetune.train", "finetune.eval", "pretrain.init_from", "prepare.tokenizer"])
def test_a_missing_input_of_a_later_stage_is_refused_before_the_first_stage(pipeline_file, tmp_path, capsys, key):
    status = main(["run", "--config", str(pipeline_file), "--set", f"{key}={tmp_path / 'missing.tsv'}"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and f"{key}: {tmp_path / 'missing.tsv'}: no such file" in error
    assert not storage.exists(str(tmp_path / "root" / "data"))  # prepare did not run


def test_a_diverging_pretraining_stops_the_run_before_anything_is_fine_tuned_or_registered(
        pipeline_file, tmp_path, capsys):
    status = main(["run", "--config", str(pipeline_file), "--set", "pretrain.lr=1e6",
                   "--set", "pretrain.max_nonfinite_steps=2"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and "training diverged" in error and "Lower pretrain.lr (peak 1e+06)" in error
    root = tmp_path / "root"
    run = root / "runs" / "scheduled"
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert sum(r["skipped_steps"] for r in records) >= 2  # the skipped steps are on record
    assert not (run / "export").exists() and not (run / "result.json").exists()
    assert not (root / "finetune").exists() and not (root / "last_run.json").exists()
    if (root / "mlflow" / "mlflow.db").exists():
        assert not MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}").search_registered_models()
