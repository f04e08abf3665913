"""`electra finetune` on a real local Ray: a learnable task, its outputs, and every bad-input case."""

from __future__ import annotations

import gzip
import json
import logging
import random
import types

import numpy as np
import pytest
import torch
import transformers

import electra_core
from pipelines.cli import main
from pipelines.config import FinetuneConfig
from pipelines.errors import InputError
from pipelines.finetune import run_finetune
from pipelines.finetune.loop import layerwise_parameter_groups
from pipelines.finetune.stage import outcome_lines
from pipelines.finetune.metrics import classification_metrics, regression_metrics
from tests.pipelines.conftest import command_errors, random_discriminator

POSITIVE = "good great wonderful superb delightful lovely".split()
NEGATIVE = "bad awful terrible dreadful boring dull".split()
FILLER = "the movie plot actors was and a with story film scenes".split()


def sentiment_rows(count: int, seed: int, labels=("0", "1")) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
        rows.append((" ".join(words), labels[1] if positive else labels[0]))
    return rows


def write_tsv(path, rows, header=("sentence", "label")) -> str:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_discriminator(tmp_path_factory.mktemp("model"))


def tiny_discriminator(root) -> str:
    """A tiny discriminator with a tokenizer that knows the task's words (no pretraining needed here)."""
    return random_discriminator(root, [s for s, _ in sentiment_rows(500, 0)], vocab_size=120)


def finetune(model_dir, train, evaluation, output, log=lambda _: None, **settings):
    # No scratch baseline unless a test asks for it: the stage's default fine-tunes everything twice.
    # In this process unless a test asks for Ray Train (which the two-worker, registry and launcher tests do):
    # the trials are the same (test_the_local_launcher_trains_what_ray_train_does), and Ray Train's start costs
    # ten seconds or more per fine-tune.
    launcher = "ray" if settings.get("workers", 1) > 1 else "local"
    config = FinetuneConfig(model=model_dir, train=train, eval=evaluation, output=str(output),
                            **{"epochs": 4, "lr": 3e-3, "batch_size": 16, "baseline": "none", "launcher": launcher,
                               **settings})
    return run_finetune(config, log=log)


@pytest.mark.usefixtures("local_ray")
def test_a_learnable_task_beats_the_majority_baseline_and_the_output_loads_in_transformers(model_dir, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(600, 1))
    evaluation = write_tsv(tmp_path / "dev.tsv", sentiment_rows(200, 2))
    result = finetune(model_dir, train, evaluation, tmp_path / "out")

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["value"] >= 0.9  # majority class is ~0.5
    assert metrics["eval"]["skipped_steps"] == 0  # no step had a non-finite gradient
    assert result["metrics"]["best_epoch"] == metrics["best_epoch"]
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 200 and set(predictions[0]["probabilities"]) == {"0", "1"}
    assert isinstance(predictions[0]["label"], int) and isinstance(predictions[0]["prediction"], int)

    ours = electra_core.ElectraForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
    theirs = transformers.ElectraForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    tokenizer = transformers.ElectraTokenizerFast.from_pretrained(tmp_path / "out")
    encoded = tokenizer(["the film was superb", "a dull story"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert (ours(**encoded).logits - theirs(**encoded).logits).abs().max().item() <= 1e-4
    accuracy_of_saved_model = np.mean([p["prediction"] == p["label"] for p in predictions])
    assert accuracy_of_saved_model == pytest.approx(metrics["value"])


@pytest.mark.usefixtures("local_ray")
@pytest.mark.usefixtures("local_ray")
def test_the_local_launcher_trains_what_ray_train_does(model_dir, tmp_path, caplog):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(300, 31))
    evaluation = write_tsv(tmp_path / "dev.tsv", sentiment_rows(100, 32))
    lines: list[str] = []
    for launcher in ("ray", "local"):
        with caplog.at_level(logging.INFO, logger="pipelines.finetune.loop"):
            finetune(model_dir, train, evaluation, tmp_path / launcher, epochs=2, trials=2, baseline="scratch",
                     launcher=launcher, log=lines.append)
    # Progress while it trains: each epoch of each trial, from both starts (the local run's records; Ray Train's
    # workers log in their own processes).
    epochs = [r.getMessage() for r in caplog.records if ": epoch " in r.getMessage()]
    assert [line.split(": epoch ")[1].split(",")[0] for line in epochs] == ["1/2", "2/2"] * 4
    assert "trial 2/2 (seed 1) from scratch: epoch 2/2" in epochs[-1] and "eval accuracy" in epochs[-1]
    on_ray, here = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("ray", "local"))
    assert [t["value"] for t in here["trials"]] == [t["value"] for t in on_ray["trials"]]
    assert here["pretraining_gain"] == on_ray["pretraining_gain"] and here["kept_trial_seed"] == on_ray["kept_trial_seed"]
    assert (tmp_path / "local" / "predictions.jsonl").read_text() == (tmp_path / "ray" / "predictions.jsonl").read_text()
    assert "without Ray (launcher local)" in "\n".join(lines)


def test_the_local_launcher_takes_one_worker_only():
    with pytest.raises(ValueError, match="launcher local trains in this process: workers must be 1, got 2"):
        FinetuneConfig(launcher="local", workers=2, batch_size=16)


def test_string_labels_and_two_workers(model_dir, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(400, 3, labels=("negative", "positive")))
    evaluation = write_tsv(tmp_path / "dev.tsv", sentiment_rows(100, 4, labels=("negative", "positive")))
    finetune(model_dir, train, evaluation, tmp_path / "out", workers=2, epochs=3)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    prediction = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert prediction["prediction"] in ("negative", "positive")


@pytest.mark.usefixtures("local_ray")
def test_regression_on_jsonl_pairs(model_dir, tmp_path):
    rng = random.Random(5)

    def rows(count):
        lines = []
        for _ in range(count):
            positives = rng.randint(0, 3)
            words = [rng.choice(FILLER) for _ in range(4)] + [rng.choice(POSITIVE) for _ in range(positives)]
            lines.append(json.dumps({"sentence1": " ".join(words), "sentence2": "the film", "score": float(positives)}))
        return "\n".join(lines) + "\n"

    (tmp_path / "train.jsonl").write_text(rows(500))
    (tmp_path / "dev.jsonl").write_text(rows(100))
    result = finetune(model_dir, str(tmp_path / "train.jsonl"), str(tmp_path / "dev.jsonl"), tmp_path / "out",
                      task_type="regression", epochs=5)
    assert result["metrics"]["metric"] == "pearson" and result["metrics"]["value"] > 0.8
    assert "spearman" in result["metrics"]["eval"]
    first = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["text_pair"] == "the film" and isinstance(first["prediction"], float)

    # Its ONNX export reads the pairs back and scores what PyTorch scored on them.
    from pipelines.config import ExportConfig
    from pipelines.deploy.export import run_export

    record = run_export(ExportConfig(model=str(tmp_path / "out"), output=str(tmp_path / "onnx")), log=lambda _: None)
    assert record["eval"]["exported"] == pytest.approx(result["metrics"]["value"], abs=1e-4)
    assert record["eval"]["max_abs_logit_difference"] < 1e-4


def test_the_scratch_baseline_draws_its_weights_as_transformers_does_whatever_the_pretraining_init(tmp_path):
    """A model pretrained with attention_init neighbour: its baseline is the normal random start a user would
    make, not a second neighbour-initialised model (which fine-tunes differently)."""
    from pipelines.finetune.loop import SCRATCH, build_classifier

    tokenizer = electra_core.train_tokenizer([s for s, _ in sentiment_rows(200, 0)], vocab_size=120)
    config = electra_core.ElectraConfig.from_preset("tiny", attention_init="neighbour",
                                                    **electra_core.special_token_ids(tokenizer))
    electra_core.ElectraForPreTraining(config).save_pretrained(str(tmp_path))
    electra_core.save_tokenizer(tokenizer, str(tmp_path))
    task = types.SimpleNamespace(task_type="classification")  # build_classifier reads only its type
    baseline = build_classifier(str(tmp_path), SCRATCH, 0, task, ["0", "1"])
    torch.manual_seed(0)
    normal = electra_core.ElectraForSequenceClassification(baseline.config)
    assert baseline.config.attention_init == "normal"
    for name, tensor in normal.state_dict().items():
        assert torch.equal(baseline.state_dict()[name], tensor), name


@pytest.mark.usefixtures("local_ray")
def test_trials_against_the_scratch_baseline_report_the_pretraining_gain(model_dir, tmp_path, monkeypatch):
    """A model that already knows the task, against random weights of its shape with the same short recipe."""
    import mlflow

    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(400, 11))
    evaluation = write_tsv(tmp_path / "dev.tsv", sentiment_rows(100, 12))
    knows_the_task = tmp_path / "knows"
    finetune(model_dir, train, evaluation, knows_the_task, baseline="none")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry = f"sqlite:///{tmp_path}/mlflow.db"
    lines: list[str] = []
    finetune(str(knows_the_task), train, evaluation, tmp_path / "out", trials=3, baseline="scratch", epochs=1,
             lr=1e-4, seed=5, register="gain-model", tracking_uri=registry, log=lines.append)

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    pretrained, scratch = metrics["trials"], metrics["baseline"]["trials"]
    assert [t["seed"] for t in pretrained] == [t["seed"] for t in scratch] == [5, 6, 7]
    values = sorted(t["value"] for t in pretrained)
    assert metrics["value"] == values[1] and metrics["summary"]["median"] == values[1]
    differences = [p["value"] - s["value"] for p, s in zip(pretrained, scratch)]
    assert metrics["pretraining_gain"]["per_trial"] == pytest.approx(differences)
    assert metrics["pretraining_gain"]["mean"] == pytest.approx(np.mean(differences))
    # The baseline starts from random weights: one epoch at a tiny rate leaves it near chance, far below the start.
    assert metrics["value"] >= 0.9 and metrics["baseline"]["summary"]["median"] <= 0.75
    assert metrics["pretraining_gain"]["mean"] >= 0.2

    # The model kept is the median trial's, the one whose score the gate compares.
    kept = next(t for t in pretrained if t["seed"] == metrics["kept_trial_seed"])
    assert kept["value"] == metrics["value"]
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert np.mean([p["prediction"] == p["label"] for p in predictions]) == pytest.approx(kept["value"])
    text = "\n".join(lines)
    assert "median of 3 trials" in text and "pretraining gain +" in text
    assert "pretraining did not help" not in text and "pretrained encoder never left chance" not in text

    client = mlflow.MlflowClient(tracking_uri=registry)
    version = client.get_model_version_by_alias("gain-model", "champion")
    logged = client.get_run(version.run_id).data.metrics
    assert logged["accuracy_median"] == pytest.approx(metrics["value"])
    assert logged["pretraining_gain"] == pytest.approx(metrics["pretraining_gain"]["mean"])
    assert version.tags["electra.pretraining_gain"].startswith(f"{metrics['pretraining_gain']['mean']:+.4f} accuracy")


@pytest.mark.parametrize("gain, warned", [(-0.012, True), (0.0, True), (0.031, False)])
def test_a_gain_of_zero_or_less_is_a_plain_warning(gain, warned):
    summary = {"mean": 0.8, "median": 0.8, "std": 0.01, "min": 0.79, "max": 0.81, "n": 3}
    metrics = {"metric": "accuracy", "value": 0.8, "summary": summary, "kept_trial_seed": 1, "best_epoch": 3,
               "seconds_total": 30.0, "baseline": {"summary": {**summary, "median": 0.8 - gain}, "seconds": 12.0},
               "pretraining_gain": {"mean": gain}}
    lines = outcome_lines(metrics)
    assert f"pretraining gain {gain:+.4f}" in lines[1]
    assert any(line.startswith("warning: pretraining did not help") for line in lines) == warned


def trial(seed: int, train_loss: float, mcc: float) -> dict:
    return {"seed": seed, "value": 0.5, "eval": {"epoch": 2, "train_loss": train_loss, "accuracy": 0.5, "mcc": mcc}}


def test_trials_that_never_left_chance_are_named_with_their_seeds():
    summary = {"mean": 0.6, "median": 0.5, "std": 0.1, "min": 0.5, "max": 0.8, "n": 3}
    metrics = {"metric": "accuracy", "value": 0.5, "summary": summary, "kept_trial_seed": 1, "best_epoch": 2,
               "seconds_total": 30.0, "task_type": "classification", "labels": ["neg", "pos"],
               # seed 0 learned; seed 1 sat at ln 2 predicting one class; seed 2's loss fell though its eval did not
               "trials": [trial(0, 0.41, 0.55), trial(1, 0.6931, 0.0), trial(2, 0.52, 0.0)],
               "baseline": {"summary": summary, "seconds": 9.0, "trials": [trial(s, 0.45, 0.5) for s in range(3)]},
               "pretraining_gain": {"mean": 0.01}}
    warnings = [line for line in outcome_lines(metrics) if line.startswith("warning")]
    assert len(warnings) == 1
    assert "1 of 3 trials from the pretrained encoder never left chance (seeds 1:" in warnings[0]
    assert "ln 2 = 0.693" in warnings[0] and "--epochs" in warnings[0]

    three_labels = {**metrics, "labels": ["a", "b", "c"], "trials": [trial(0, 1.0986, 0.0)]}
    assert any("(seeds 0: train loss at ln 3 = 1.099" in line for line in outcome_lines(three_labels))
    assert not any("never left chance" in line for line in outcome_lines({**metrics, "task_type": "regression"}))


def test_layerwise_decay_is_the_references():
    """The head gets the full rate, the top layer decay^2, layer i decay^(L + 1 - i), the embeddings decay^(L + 2)."""
    model = electra_core.ElectraForSequenceClassification(electra_core.ElectraConfig.from_preset("tiny"))
    groups = layerwise_parameter_groups(model, FinetuneConfig(layer_decay=0.5), num_layers=2)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["classifier.out_proj.weight"])] == 1.0
    assert scale_of[id(named["electra.encoder.layer.1.output.dense.weight"])] == 0.5**2
    assert scale_of[id(named["electra.encoder.layer.0.output.dense.weight"])] == 0.5**3
    assert scale_of[id(named["electra.embeddings.word_embeddings.weight"])] == 0.5**4
    assert scale_of[id(named["electra.embeddings_project.weight"])] == 0.5**4


@pytest.mark.parametrize(
    "train_text, eval_text, flags, message",
    [
        ("sentence\tlabel\ngood film\t1\nbad film\t0\n", "sentence\tlabel\nok\t2\n", [],
         "dev.tsv: row 1: label 2 in column 'label' never appears in the training data"),
        ("sentence\tlabel\ngood film\t1\n\t0\n", "sentence\tlabel\nok\t1\n", [], "train.tsv: row 2: column 'sentence' is empty"),
        ("review\tlabel\ngood film\t1\nbad\t0\n", "review\tlabel\nok\t1\n", ["--text-column", "text"],
         "train.tsv: no column 'text' (columns: review, label)"),
        ("words\tstars\ngood film\t1\nbad\t0\n", "words\tstars\nok\t1\n", [], "cannot tell which column holds the text"),
        ("sentence\tlabel\ngood film\t1\nbad film\t\n", "sentence\tlabel\nok\t1\n", [],
         "train.tsv: row 2: column 'label' is empty"),
        ("sentence\tlabel\ngood film\t1\nbad film\t0\n", "sentence\tlabel\nok\t1\n", ["--trials", "0"],
         "trials must be at least 1"),
        ("sentence\tlabel\ngood film\t1\nbad film\t0\n", "sentence\tlabel\nok\t1\n", ["--baseline", "imagenet"],
         "baseline must be one of scratch, none"),
        ("sentence\tlabel\ngood film\t1\nbad film\t0\n", "sentence\tlabel\nok\t1\n", ["--max-seq-len", "256"],
         "--max-seq-len 256 is longer than the model's 128 positions"),
    ],
)
def test_bad_data_is_a_one_line_error_naming_file_row_and_column_with_exit_2(
        model_dir, tmp_path, capsys, train_text, eval_text, flags, message):
    (tmp_path / "train.tsv").write_text(train_text)
    (tmp_path / "dev.tsv").write_text(eval_text)
    status = main(["finetune", "--model", model_dir, "--train", str(tmp_path / "train.tsv"),
                   "--eval", str(tmp_path / "dev.tsv"), "--output", str(tmp_path / "out"), *flags])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and message in error


@pytest.mark.parametrize("name, content, message", [
    ("train.tsv.gz", b"sentence\tlabel\ngood film\t1\n", "train.tsv.gz: not a readable gzip file"),
    ("train.tsv.gz", gzip.compress(b"sentence\tlabel\n" + b"good film\t1\nbad film\t0\n" * 50)[:40],
     "train.tsv.gz: not a readable gzip file"),
    ("train.jsonl", b'{"text": {"a": 1}, "label": 0}\n{"text": {"b": 2}, "label": 1}\n',
     "train.jsonl: row 1: column 'text' holds a JSON dict, not text"),
    ("train.tsv", b"sentence\tscore\ngood film\t3.8\nbad film\t0.4\n",
     "column 'score' holds fractional numbers such as 3.8, not class labels; for scores use --task-type regression"),
], ids=["not-gzip", "truncated-gzip", "json-object-as-text", "scores-as-classes"])
def test_files_that_would_have_trained_on_garbage_or_crashed_are_one_line_errors(
        model_dir, tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    status = main(["finetune", "--model", model_dir, "--train", str(tmp_path / name), "--eval", str(tmp_path / name),
                   "--output", str(tmp_path / "out")])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and message in error


def write_with_latin1_row(path, rows) -> None:
    """A labeled file in the format its name says, one row of it (the third data row) in Latin-1."""
    bad = "Caf\xe9 na\xefve film is good"
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        texts = [text.encode() for text, _ in rows]
        texts[2] = bad.encode("latin-1")
        pq.write_table(pa.table({"sentence": pa.array(texts, pa.binary()), "label": [label for _, label in rows]}),
                       path)
        return
    if path.suffix == ".jsonl":
        lines = [json.dumps({"sentence": text, "label": label}).encode() for text, label in rows]
        lines[2] = lines[2].replace(rows[2][0].encode(), bad.encode("latin-1"))
        path.write_bytes(b"\n".join(lines) + b"\n")
        return
    separator = "\t" if path.suffix == ".tsv" else ","
    lines = [f"sentence{separator}label".encode()] + [f"{t}{separator}{l}".encode() for t, l in rows]
    lines[3] = f"{bad}{separator}{rows[2][1]}".encode("latin-1")
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("name", ["train.tsv", "train.csv", "train.jsonl", "train.parquet"])
def test_invalid_utf8_is_replaced_counted_and_named_never_read_as_bytes(tmp_path, name):
    from pipelines.finetune.data import read_labeled

    write_with_latin1_row(tmp_path / name, sentiment_rows(20, 1))
    data = read_labeled(str(tmp_path / name), None, None, None)
    assert len(data.texts) == 20 and not any(text.startswith(("b'", 'b"')) for text in data.texts)
    assert data.texts[2] == "Caf\ufffd na\ufffdve film is good"
    assert data.texts[:2] == [text for text, _ in sentiment_rows(20, 1)[:2]]
    (warning,) = data.warnings
    place = "row 3, column 'sentence'" if name.endswith(".parquet") else ("line 3" if name.endswith(".jsonl")
                                                                          else "line 4")
    assert name in warning and "2 invalid UTF-8 bytes" in warning and place in warning


@pytest.mark.parametrize("encoding, outcome", [("utf-8-sig", "read"), ("utf-16", "refused"), ("utf-32", "refused")])
def test_a_byte_order_mark_is_dropped_and_utf16_is_refused_not_garbled(tmp_path, encoding, outcome):
    from pipelines.finetune.data import read_labeled

    rows = sentiment_rows(10, 1)
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows),
                                        encoding=encoding)
    if outcome == "read":
        data = read_labeled(str(tmp_path / "train.tsv"), None, None, None)
        assert data.columns[0] == "sentence" and data.texts == [text for text, _ in rows] and not data.warnings
    else:
        with pytest.raises(InputError, match="train.tsv: holds NUL bytes .*save it as UTF-8"):
            read_labeled(str(tmp_path / "train.tsv"), None, None, None)


@pytest.mark.usefixtures("local_ray")
def test_a_latin1_row_trains_with_a_warning_and_strict_refuses_it_with_exit_2(model_dir, tmp_path, capsys):
    write_with_latin1_row(tmp_path / "train.tsv", sentiment_rows(40, 1))
    evaluation = write_tsv(tmp_path / "dev.tsv", sentiment_rows(20, 2))
    logs = []
    result = finetune(model_dir, str(tmp_path / "train.tsv"), evaluation, tmp_path / "out", log=logs.append,
                      epochs=1, baseline="none")
    assert any("40 training and 20 eval examples" in line for line in logs)
    assert any(line.startswith("warning: ") and "train.tsv" in line and "line 4" in line for line in logs)
    assert result["metrics"]["eval"]

    status = main(["finetune", "--model", model_dir, "--train", str(tmp_path / "train.tsv"), "--eval", evaluation,
                   "--output", str(tmp_path / "strict"), "--strict"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and "train.tsv: line 4: invalid UTF-8" in error
    assert not (tmp_path / "strict").exists()


def test_an_output_that_is_a_file_exits_2_before_ray_starts(model_dir, tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(20, 1))
    (tmp_path / "out").write_text("a file")
    status = main(["finetune", "--model", model_dir, "--train", train, "--eval", train, "--output",
                   str(tmp_path / "out")])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and f"{tmp_path / 'out'}: --output is a file, not a directory" in error


def test_a_model_uri_that_is_neither_a_model_nor_a_run_is_refused(tmp_path):
    with pytest.raises(InputError, match="not a model directory"):
        run_finetune(FinetuneConfig(model=str(tmp_path), train="t.tsv", eval="e.tsv", output=str(tmp_path / "o")))


def test_metrics_match_hand_computed_values():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    predictions = np.array([1, 1, 0, 0, 0, 1, 0, 1])
    metrics = classification_metrics(predictions, labels, 2)
    assert metrics["accuracy"] == 0.75
    assert metrics["f1"] == pytest.approx(0.75)  # precision 3/4, recall 3/4
    assert metrics["mcc"] == pytest.approx(0.5)  # (3*3 - 1*1) / sqrt(4*4*4*4)
    perfect = regression_metrics(np.array([1.0, 2.0, 3.0, 10.0]), np.array([2.0, 4.0, 6.0, 7.0]))
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["pearson"] < 1.0


# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("local_ray")
def test_registered_versions_are_promoted_only_on_improvement_and_answer_through_pyfunc(
        model_dir, tmp_path, mlflow_server, capsys, monkeypatch):
    import mlflow
    import pandas as pd

    labels = ("negative", "positive")
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(600, 7, labels=labels))
    evaluation = write_tsv(tmp_path / "dev.tsv", sentiment_rows(200, 8, labels=labels))
    first = finetune(model_dir, train, evaluation, tmp_path / "v1", register="sentiment", tracking_uri=mlflow_server)
    # The second reaches the server with credentials in its URI (basic auth; this server ignores it): they must
    # not end up in the registry, the saved config, the result or the log.
    with_credentials = mlflow_server.replace("http://", "http://ci-user:s3cr3t-pass@")
    lines = []
    worse = finetune(model_dir, train, evaluation, tmp_path / "v2", register="sentiment",
                     tracking_uri=with_credentials, lr=1e-9, epochs=1, log=lines.append)

    assert first["registry"]["version"] == "1" and "promoted" in first["registry"]["decision"]
    assert worse["registry"]["score"] < first["registry"]["score"]
    assert "kept version 1 as champion" in worse["registry"]["decision"]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    assert str(client.get_model_version_by_alias("sentiment", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("sentiment", "challenger").version) == "2"
    tags = client.get_model_version("sentiment", "2").tags
    assert "kept version 1" in tags["electra.promotion"] and "vs champion" in tags["electra.scores"]
    run = client.get_run(client.get_model_version("sentiment", "1").run_id)
    assert run.data.params["lr"] == "0.003" and "electra.code_version" in run.data.tags
    assert run.data.metrics["accuracy"] == first["registry"]["score"]
    second = client.get_run(client.get_model_version("sentiment", "2").run_id)
    written = [json.dumps(second.data.params), json.dumps(second.data.tags), json.dumps(worse), *lines,
               (tmp_path / "v2" / "finetune_config.json").read_text(), *capsys.readouterr()]
    assert second.data.params["tracking_uri"] == mlflow_server.replace("http://", "http://***@")
    assert not [text for text in written if "s3cr3t-pass" in text or "ci-user" in text]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # restored after the test (set_tracking_uri exports it)
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/sentiment@champion")
    answer = model.predict(pd.DataFrame({"sentence": ["the film was superb", "a dull and boring story"]}))
    assert answer["label"].tolist() == ["positive", "negative"]
    assert set(answer.columns) == {"label", "negative", "positive"}
    assert answer[["negative", "positive"]].sum(axis=1).round(5).tolist() == [1.0, 1.0]


@pytest.mark.usefixtures("local_ray")
def test_the_embedded_default_registry_needs_no_server(model_dir, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(300, 9))
    evaluation = write_tsv(tmp_path / "dev.tsv", sentiment_rows(100, 10))
    result = finetune(model_dir, train, evaluation, tmp_path / "out", register="local-model", epochs=2)
    assert result["registry"]["tracking_uri"].startswith("sqlite:///") and (tmp_path / "outputs" / "mlflow").is_dir()
    client = mlflow.MlflowClient(tracking_uri=result["registry"]["tracking_uri"])
    assert str(client.get_model_version_by_alias("local-model", "champion").version) == "1"


def test_a_pretrained_start_has_its_grown_embeddings_rescaled_without_changing_what_it_computes(model_dir, tmp_path):
    from types import SimpleNamespace

    from pipelines.finetune.loop import PRETRAINED, build_classifier

    grown = electra_core.ElectraForPreTraining.from_pretrained(model_dir)
    with torch.no_grad():  # as pretraining leaves them: several times their initial scale
        grown.electra.embeddings.word_embeddings.weight.mul_(5.0)
        grown.electra.embeddings.position_embeddings.weight.mul_(2.0)
    grown.save_pretrained(str(tmp_path / "grown"))
    electra_core.save_tokenizer(electra_core.load_tokenizer(model_dir), str(tmp_path / "grown"))
    task = SimpleNamespace(task_type="classification")
    as_saved = build_classifier(str(tmp_path / "grown"), PRETRAINED, 0, task, ["0", "1"]).eval()
    rescaled = build_classifier(str(tmp_path / "grown"), PRETRAINED, 0, task, ["0", "1"], rescale_embeddings=True).eval()

    table = rescaled.electra.embeddings.word_embeddings.weight
    assert table.pow(2).mean().sqrt().item() == pytest.approx(rescaled.config.initializer_range, rel=1e-4)
    input_ids = torch.randint(5, rescaled.config.vocab_size, (4, 10))
    with torch.no_grad():
        torch.testing.assert_close(rescaled(input_ids).logits, as_saved(input_ids).logits, atol=1e-5, rtol=1e-4)
    assert FinetuneConfig(model="m", train="t", eval="e", output="o").rescale_embeddings  # on by default


@pytest.mark.usefixtures("local_ray")
def test_a_diverging_fine_tune_exits_2_and_writes_no_model(model_dir, tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(64, 1))
    evaluation = write_tsv(tmp_path / "dev.tsv", sentiment_rows(20, 2))
    output = tmp_path / "out"
    arguments = ["finetune", "--model", model_dir, "--train", train, "--eval", evaluation, "--output", str(output),
                 "--epochs", "1", "--batch-size", "4", "--baseline", "none", "--max-nonfinite-steps", "3"]
    status = main(arguments + ["--lr", "1e6"])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and "training diverged in the pretrained trial (seed 0)" in error
    assert "Lower finetune.lr (now 1e+06)" in error
    assert not (output / "config.json").exists() and not (output / "metrics.json").exists()
