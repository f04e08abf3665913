"""Extractive question answering data (#17): SQuAD 1.1 / 2.0 JSON as published or JSONL rows, checked question
by question; long contexts split into windows with a document stride; the best answer span over all windows.

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


# ----------------------------------------------------------------------------------------------------------
# Windows over long contexts, and the best span over them
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Window:
    """One model input: [CLS] question [SEP] part of the context [SEP]."""

    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # a context token's characters in the context; None elsewhere
    start_position: int  # the answer's first and last token, or 0 ([CLS]) when it is not inside this window
    end_position: int


def windows(tokenizer, example: QuestionExample, max_seq_len: int, doc_stride: int,
            max_query_len: int = 64) -> list[Window]:
    """Windows of the context, each starting doc_stride tokens after the previous, so that every answer lies
    whole in at least one of them when it is shorter than a window (as the reference and transformers do)."""
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    question = tokenizer.encode(example.question, add_special_tokens=False).ids[:max_query_len]
    context = tokenizer.encode(example.context, add_special_tokens=False)
    room = max_seq_len - len(question) - 3
    if room < 1:
        raise InputError(f"question {example.id!r}: max_seq_len {max_seq_len} leaves no room for the context "
                         f"after a question of {len(question)} tokens")
    answer_tokens = _answer_tokens(context.offsets, example)
    result, first = [], 0
    while True:
        last = min(first + room, len(context.ids))
        ids = [cls_id, *question, sep_id, *context.ids[first:last], sep_id]
        types = [0] * (len(question) + 2) + [1] * (last - first + 1)
        offsets = [None] * (len(question) + 2) + list(context.offsets[first:last]) + [None]
        start = end = 0
        if answer_tokens is not None and first <= answer_tokens[0] and answer_tokens[1] < last:
            shift = len(question) + 2 - first
            start, end = answer_tokens[0] + shift, answer_tokens[1] + shift
        result.append(Window(ids, types, offsets, start, end))
        if last >= len(context.ids):
            return result
        first += min(doc_stride, room)


def _answer_tokens(offsets: list[tuple[int, int]], example: QuestionExample) -> tuple[int, int] | None:
    """The first answer's first and last context token (the one trained on, as the reference), or None."""
    if not example.answers:
        return None
    start_char, end_char = example.starts[0], example.starts[0] + len(example.answers[0])
    inside = [i for i, (begin, end) in enumerate(offsets) if begin < end_char and end > start_char]
    return (inside[0], inside[-1]) if inside else None


@dataclass
class Answer:
    text: str  # "" for no answer
    score: float  # the best span's start + end logit
    start: int  # character offset in the context; -1 for no answer
    null_score: float  # the [CLS] start + end logit, lowest over windows (SQuAD 2.0)


def best_answer(example: QuestionExample, example_windows: list[Window], start_logits: list, end_logits: list,
                max_answer_len: int = 30, top: int = 20) -> Answer:
    """The span with the highest start + end logit over all windows, within max_answer_len tokens and inside
    the context; the caller compares it with null_score to answer "" (SQuAD 2.0)."""
    best, null = None, None
    for window, starts, ends in zip(example_windows, start_logits, end_logits):
        starts, ends = [float(x) for x in starts], [float(x) for x in ends]
        window_null = starts[0] + ends[0]
        null = window_null if null is None else min(null, window_null)
        candidates = [i for i in sorted(range(len(starts)), key=starts.__getitem__, reverse=True)
                      if window.offsets[i] is not None][:top]
        ends_ranked = [j for j in sorted(range(len(ends)), key=ends.__getitem__, reverse=True)
                       if window.offsets[j] is not None][:top]
        for i in candidates:
            for j in ends_ranked:
                if j < i or j - i + 1 > max_answer_len:
                    continue
                score = starts[i] + ends[j]
                if best is None or score > best[0]:
                    best = (score, window.offsets[i][0], window.offsets[j][1])
    null = 0.0 if null is None else null
    if best is None:
        return Answer("", null, -1, null)
    score, begin, end = best
    return Answer(example.context[begin:end], score, begin, null)
