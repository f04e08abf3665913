"""Extractive question answering data (#17): SQuAD 1.1 / 2.0 JSON as published or JSONL rows, checked question
by question. (Long contexts split into windows and the best span over them: electra_core.question_answering.)

- SQuAD JSON: `{"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question", "answers": [{"text",
  "answer_start"}]}]}]}]}`; a question with no answers (or `"is_impossible": true`) is unanswerable.
- JSONL: rows with `question`, `context` and `answers` as `{"text": [...], "answer_start": [...]}` (empty lists
  for an unanswerable question), optionally `id`.
Every problem is a one-line InputError naming the file and the question (its id, or the JSONL row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from electra_core import storage
from pipelines.errors import InputError
from pipelines.finetune.data import jsonl_objects


@dataclass
class QuestionExample:
    id: str
    question: str
    context: str
    answers: list[str]  # empty: unanswerable
    starts: list[int]  # character offsets of the answers in the context


def read_questions(uri: str) -> list[QuestionExample]:
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise InputError(f"{uri}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{uri}: not UTF-8 text") from None
    if uri.lower().endswith((".jsonl", ".ndjson")):
        examples = [_jsonl_question(uri, row, record) for row, record in
                    jsonl_objects(uri, text, "'question', 'context' and 'answers'")]
    else:
        examples = _squad_questions(uri, text)
    if not examples:
        raise InputError(f"{uri}: no questions")
    for example in examples:
        _check(uri, example)
    return examples


def _squad_questions(uri: str, text: str) -> list[QuestionExample]:
    shape = 'SQuAD-shaped JSON ({"data": [{"paragraphs": [{"context": ..., "qas": [...]}]}]})'
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{uri}: not JSON ({error.msg} at line {error.lineno}); expected {shape} or .jsonl rows"
                         ) from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise InputError(f"{uri}: not {shape}")
    examples = []
    for article in document["data"]:
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise InputError(f"{uri}: an article without a 'paragraphs' list: not {shape}")
        for paragraph in paragraphs:
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise InputError(f"{uri}: a paragraph without a 'qas' list: not {shape}")
            for number, qa in enumerate(paragraph["qas"], start=1):
                if not isinstance(qa, dict):
                    raise InputError(f"{uri}: a question that is not a JSON object: not {shape}")
                answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                if not all(isinstance(a, dict) and "text" in a and "answer_start" in a for a in answers):
                    raise InputError(f"{uri}: question {qa.get('id', number)!r}: each answer needs 'text' and "
                                     "'answer_start'")
                examples.append(QuestionExample(str(qa.get("id", len(examples) + 1)), qa.get("question"),
                                                paragraph.get("context"), [a["text"] for a in answers],
                                                [a["answer_start"] for a in answers]))
    return examples


def _jsonl_question(uri: str, row: int, record: dict) -> QuestionExample:
    answers = record.get("answers", {"text": [], "answer_start": []})
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list) or len(answers["text"]) != len(answers["answer_start"]):
        raise InputError(f"{uri}: row {row}: field 'answers' must be {{\"text\": [...], \"answer_start\": [...]}} "
                         "with one start per text")
    return QuestionExample(str(record.get("id", f"row {row}")), record.get("question"), record.get("context"),
                           answers["text"], answers["answer_start"])


def _check(uri: str, example: QuestionExample) -> None:
    where = f"{uri}: question {example.id!r}"
    for name in ("question", "context"):
        value = getattr(example, name)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{where}: field {name!r} is empty")
    for answer, start in zip(example.answers, example.starts):
        if not isinstance(answer, str) or not answer.strip():
            raise InputError(f"{where}: an answer's text is empty")
        if not isinstance(start, int) or isinstance(start, bool):
            raise InputError(f"{where}: answer_start {start!r} is not a character offset")
        found = example.context[start:start + len(answer)] if start >= 0 else ""
        if found != answer:
            raise InputError(f"{where}: answer {answer!r} is not at answer_start {start} of its context "
                             f"(found {found!r} there)")
