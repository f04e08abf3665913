"""`electra finetune --task-type token-classification` (#17): a tagger that learns made-up entities, its output
loading in transformers with identical logits, its registered pyfunc answering tags and entities, words past
max_seq_len scored and warned about, and bad input refused with one line and exit 2."""

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

PEOPLE = [("Ada", "Lovelace"), ("Alan", "Turing"), ("Grace", "Hopper"), ("Edsger", "Dijkstra"), ("Barbara", "Liskov")]
PLACES = "Paris Berlin Lisbon Oslo Vienna Dublin".split()
FILLER = "the met in and went to a visit from with saw later today talked".split()


def tagged_sentences(count: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Filler words with a person (B-PER I-PER) and a place (B-LOC) at random positions; a sentence may also
    name a place as a single capitalised word, so the tag needs the word, not only its position."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        tags = ["O"] * len(words)
        first, last = rng.choice(PEOPLE)
        at = rng.randint(0, len(words))
        words[at:at] = [first, last]
        tags[at:at] = ["B-PER", "I-PER"]
        at = rng.randint(0, len(words))
        words.insert(at, rng.choice(PLACES))
        tags.insert(at, "B-LOC")
        sentences.append((words, tags))
    return sentences


def write_conll(path, sentences) -> str:
    path.write_text("-DOCSTART- O\n\n" + "".join(
        "".join(f"{w} X {t}\n" for w, t in zip(words, tags)) + "\n" for words, tags in sentences))
    return str(path)


def write_jsonl(path, sentences) -> str:
    path.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in sentences))
    return str(path)


def tagging_discriminator(root) -> str:
    """A tiny random discriminator whose tokenizer knows the task's words (no pretraining needed here)."""
    return random_discriminator(root, [" ".join(words) for words, _ in tagged_sentences(400, 0)], vocab_size=120)


def tag(model_dir, train, evaluation, output, log=lambda _: None, **settings) -> dict:
    config = FinetuneConfig(model=model_dir, train=train, eval=evaluation, output=str(output),
                            task_type="token-classification",
                            **{"epochs": 4, "lr": 3e-3, "batch_size": 16, "baseline": "none", "launcher": "local",
                               **settings})
    return run_finetune(config, log=log)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tagging_discriminator(tmp_path_factory.mktemp("tagger-model"))


@pytest.fixture(scope="module")
def tagged(model_dir, tmp_path_factory):
    """One fine-tune, CoNLL text for training and JSONL for eval, registered in an embedded store:
    (its result, its output directory, the store's URI, its log lines)."""
    import os

    root = tmp_path_factory.mktemp("tagged")
    train = write_conll(root / "train.conll", tagged_sentences(400, 1))
    evaluation = write_jsonl(root / "dev.jsonl", tagged_sentences(120, 2))
    registry = f"sqlite:///{root}/mlflow.db"
    saved, lines = os.environ.pop("MLFLOW_TRACKING_URI", None), []
    try:
        result = tag(model_dir, train, evaluation, root / "out", log=lines.append, register="tagger",
                     tracking_uri=registry)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return result, root / "out", registry, lines


def test_the_tagger_finds_the_entities_far_better_than_the_majority_tag(tagged):
    result, output, _, lines = tagged
    metrics = json.loads((output / "metrics.json").read_text())
    # Tagging every word O (the majority tag) scores entity F1 0 and token accuracy about 0.6.
    assert metrics["metric"] == "f1" and metrics["tag_scheme"] == "entity"
    assert metrics["eval"]["f1"] > 0.8 and metrics["eval"]["accuracy"] > 0.9
    assert metrics["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]
    assert "entities: LOC, PER" in lines[0]
    predictions = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 120
    assert all(len(p["prediction"]) == len(p["tokens"]) == len(p["tags"]) for p in predictions)
    right = sum(p["prediction"] == p["tags"] for p in predictions)
    assert right / len(predictions) > 0.6


def test_transformers_loads_the_tagger_with_identical_logits(tagged):
    _, output, _, _ = tagged
    ours = electra_core.ElectraForTokenClassification.from_pretrained(str(output)).eval()
    theirs = transformers.ElectraForTokenClassification.from_pretrained(str(output)).eval()
    assert theirs.config.id2label == {0: "B-LOC", 1: "B-PER", 2: "I-PER", 3: "O"}
    tokenizer = electra_core.load_tokenizer(str(output))
    ids = torch.tensor([tokenizer.encode("Ada Lovelace went to Oslo today").ids])
    with torch.no_grad():
        np.testing.assert_allclose(ours(ids).logits.numpy(), theirs(ids).logits.numpy(), atol=1e-5)


def test_the_registered_tagger_answers_tags_and_entities_through_pyfunc(tagged, monkeypatch):
    import mlflow
    import pandas as pd

    result, _, registry, _ = tagged
    assert "promoted" in result["registry"]["decision"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry)
    mlflow.set_tracking_uri(registry)
    model = mlflow.pyfunc.load_model("models:/tagger@champion")
    answer = model.predict(pd.DataFrame({"tokens": [["Grace", "Hopper", "went", "to", "Dublin"], ["the", "visit"]]}))
    assert answer["tags"].tolist() == [["B-PER", "I-PER", "O", "O", "B-LOC"], ["O", "O"]]
    assert answer["entities"][0] == [{"type": "PER", "first": 0, "last": 1}, {"type": "LOC", "first": 4, "last": 4}]
    from_text = model.predict(pd.DataFrame({"text": ["Grace Hopper went to Dublin"]}))
    assert from_text["tags"].tolist() == answer["tags"].tolist()[:1]


def test_export_and_serve_refuse_a_tagger_with_one_line(tagged, tmp_path, capsys):
    _, output, _, _ = tagged
    status = main(["export", "--model", str(output), "--output", str(tmp_path / "onnx")])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and "a token-classification model; electra export and serve take sentence" in error


def test_a_tag_set_without_entities_is_scored_per_token_and_long_sentences_are_warned_about(model_dir, tmp_path):
    # Part-of-speech-like tags: no B-/I- prefixes, so F1 is the macro F1 over tags. With max_seq_len 8 the long
    # eval sentences lose their last words, which are scored as the commonest tag and named in a warning.
    def parts_of_speech(count, seed):
        kinds = {w: "NAME" for pair in PEOPLE for w in pair} | {w: "PLACE" for w in PLACES}
        return [(words, [kinds.get(w, "OTHER") for w in words]) for words, _ in tagged_sentences(count, seed)]

    lines = []
    result = tag(model_dir, write_jsonl(tmp_path / "train.jsonl", parts_of_speech(300, 3)),
                 write_conll(tmp_path / "dev.txt", parts_of_speech(80, 4)), tmp_path / "out", log=lines.append,
                 max_seq_len=8, metric="accuracy")
    metrics = result["metrics"]
    assert metrics["tag_scheme"] == "token" and metrics["fill_tag"] == "OTHER" and metrics["metric"] == "accuracy"
    assert 0.0 < metrics["eval"]["f1"] <= 1.0 and "precision" not in metrics["eval"]
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert "words lie past --max-seq-len 8" in warning and "dev.txt" in warning
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert all(len(p["prediction"]) == len(p["tokens"]) for p in predictions)


@pytest.mark.parametrize("train_text, eval_text, flags, message", [
    ("a O\nb B-X\n", "a O\nc B-Y\n", [], "dev.txt: sentence 1, token 2: tag 'B-Y' never appears in the training data"),
    ("a O\nb\n", "a O\n", [], "train.txt: line 2: one column ('b')"),
    ("a O\nb O\n", "a O\n", [], "train.txt: every token is tagged 'O'; token classification needs at least two tags"),
    ("a O\nb B-X\n", "a O\n", ["--metric", "mcc"], "metric must be one of ('f1', 'accuracy') for token-classification"),
], ids=["unseen-eval-tag", "too-few-columns", "one-tag", "wrong-metric"])
def test_bad_tagged_input_is_one_line_with_exit_2(model_dir, tmp_path, capsys, train_text, eval_text, flags, message):
    (tmp_path / "train.txt").write_text(train_text)
    (tmp_path / "dev.txt").write_text(eval_text)
    status = main(["finetune", "--task-type", "token-classification", "--model", model_dir,
                   "--train", str(tmp_path / "train.txt"), "--eval", str(tmp_path / "dev.txt"),
                   "--output", str(tmp_path / "out"), *flags])
    (error,) = command_errors(capsys.readouterr().err)
    assert status == 2 and message in error
