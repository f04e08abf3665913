"""`electra finetune --task-type question-answering` (#17): a reader that learns to find made-up answers in
contexts longer than one window, abstains on unanswerable questions with a tuned threshold (SQuAD 2.0 style),
loads in transformers with identical logits, and refuses bad data with one line and exit 2."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import transformers

import electra_core
from pipelines.cli import main
from pipelines.config import FinetuneConfig
from pipelines.finetune import run_finetune
from tests.pipelines.conftest import command_errors, random_discriminator

PLACES = "Paris Berlin Lisbon Oslo Vienna Dublin Madrid Prague".split()
FILLER = "the a morning train left early and people talked about weather while rain fell on roofs".split()


def questions(count: int, seed: int, unanswerable: float = 0.0) -> list[dict]:
    """JSONL rows: a context of filler words that names one city (the answer) somewhere, 20 to 60 words long,
    so that contexts span several windows; a share of contexts name none (unanswerable)."""
    rng = random.Random(seed)
    rows = []
    for number in range(count):
        words = [rng.choice(FILLER) for _ in range(rng.randint(20, 60))]
        answers = {"text": [], "answer_start": []}
        if rng.random() >= unanswerable:
            at = rng.randint(0, len(words))
            city = rng.choice(PLACES)
            context = " ".join(words[:at] + [city] + words[at:])
            start = len(" ".join(words[:at])) + (1 if at else 0)
            answers = {"text": [city], "answer_start": [start]}
        else:
            context = " ".join(words)
        rows.append({"id": f"q{seed}-{number}", "question": "which city did the train go to", "context": context,
                     "answers": answers})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def as_squad(path, rows) -> str:
    """The same questions as SQuAD JSON (one paragraph per question)."""
    paragraphs = [{"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                   "answers": [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"],
                                                                               r["answers"]["answer_start"])],
                   "is_impossible": not r["answers"]["text"]}]} for r in rows]
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "made up", "paragraphs": paragraphs}]}))
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = [r["context"] for r in questions(200, 0)] + ["which city did the train go to"] * 20
    # vocab 150: whole words, so an answer is one token
    return random_discriminator(tmp_path_factory.mktemp("reader-model"), texts, vocab_size=150)


def read(model_dir, train, evaluation, output, log=lambda _: None, **settings) -> dict:
    config = FinetuneConfig(model=model_dir, train=train, eval=evaluation, output=str(output),
                            task_type="question-answering",
                            **{"epochs": 2, "lr": 3e-3, "batch_size": 16, "baseline": "none", "launcher": "local",
                               "max_seq_len": 32, "doc_stride": 12, **settings})
    return run_finetune(config, log=log)


def test_a_reader_finds_answers_across_windows_and_loads_in_transformers_with_identical_logits(model_dir, tmp_path):
    lines = []
    result = read(model_dir, write_jsonl(tmp_path / "train.jsonl", questions(300, 1)),
                  as_squad(tmp_path / "dev.json", questions(80, 2)), tmp_path / "out", log=lines.append)
    metrics = result["metrics"]
    # A span drawn at random from a 20-60-word context is almost never the city: exact match near 0.
    assert metrics["metric"] == "f1" and metrics["eval"]["exact"] > 70 and metrics["eval"]["f1"] > 70
    assert "null_threshold" not in metrics["eval"] and metrics["answers_null"] is False
    assert "training questions (0 unanswerable) in" in lines[0]
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    right = [p for p in predictions if p["prediction"] == p["answers"][0]]
    assert len(predictions) == 80 and len(right) > 56
    contexts = {r["id"]: r["context"] for r in questions(80, 2)}
    assert all(contexts[p["id"]][p["start"]:].startswith(p["prediction"]) for p in right)

    ours = electra_core.ElectraForQuestionAnswering.from_pretrained(str(tmp_path / "out")).eval()
    theirs = transformers.ElectraForQuestionAnswering.from_pretrained(str(tmp_path / "out")).eval()
    ids = torch.tensor([electra_core.load_tokenizer(str(tmp_path / "out")).encode("which city", "rain in Oslo").ids])
    with torch.no_grad():
        mine, reference = ours(ids), theirs(ids)
    np.testing.assert_allclose(mine.start_logits.numpy(), reference.start_logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(mine.end_logits.numpy(), reference.end_logits.numpy(), atol=1e-5)


def test_unanswerable_questions_get_a_tuned_no_answer_threshold_and_the_registered_reader_answers(
        model_dir, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    registry = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = read(model_dir, write_jsonl(tmp_path / "train.jsonl", questions(300, 3, unanswerable=0.3)),
                  write_jsonl(tmp_path / "dev.jsonl", questions(80, 4, unanswerable=0.3)), tmp_path / "out",
                  register="reader", tracking_uri=registry)
    record = result["metrics"]["eval"]
    assert result["metrics"]["answers_null"] is True and "null_threshold" in record
    assert record["HasAns_total"] + record["NoAns_total"] == 80
    # Always answering a span scores NoAns 0; always abstaining scores HasAns 0. The tuned model does both.
    assert record["NoAns_exact"] > 50 and record["HasAns_exact"] > 50
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert any(p["prediction"] == "" and p["start"] == -1 for p in predictions)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    mlflow.set_tracking_uri(registry)
    model = mlflow.pyfunc.load_model("models:/reader@champion")
    named = "the morning train left early and " * 6 + "people talked about Prague while rain fell"
    answer = model.predict(pd.DataFrame({"question": ["which city did the train go to"] * 2,
                                         "context": [named, "the rain fell on roofs " * 8]}))
    assert answer["answer"].tolist() == ["Prague", ""]
    assert answer["start"].tolist() == [named.index("Prague"), -1]


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "context": "rain in Oslo", "answers": {"text": ["Oslo"], "answer_start": [3]}},
     "answer 'Oslo' is not at answer_start 3 of its context (found 'n in' there)"),
    ({"question": " ", "context": "rain in Oslo", "answers": {"text": [], "answer_start": []}},
     "field 'question' is empty"),
], ids=["answer-start-mismatch", "empty-question"])
def test_bad_question_data_is_one_line_with_exit_2(model_dir, tmp_path, capsys, row, message):
    train = write_jsonl(tmp_path / "train.jsonl", [row])
    status = main(["finetune", "--task-type", "question-answering", "--model", model_dir, "--train", train,
                   "--eval", train, "--output", str(tmp_path / "out")])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and "train.jsonl: question 'row 1'" in error and message in error
