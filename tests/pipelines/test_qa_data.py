"""Question answering data: SQuAD JSON and JSONL read as published, bad input refused naming the question,
long contexts split into windows that hold the answer, the best span found over windows (#17)."""

from __future__ import annotations

import json

import pytest

import electra_core
from pipelines.errors import InputError
from electra_core.question_answering import best_answer, windows
from pipelines.finetune.qa_data import read_questions

CONTEXT = "The tower was finished in 1889 in Paris. It is made of iron."


def squad_file(tmp_path, qas, context=CONTEXT, name="dev.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas}]}]}))
    return str(path)


def test_squad_json_and_jsonl_give_the_same_questions(tmp_path):
    uri = squad_file(tmp_path, [
        {"id": "q1", "question": "When was it finished?", "answers": [{"text": "1889", "answer_start": 26}]},
        {"id": "q2", "question": "Who built it?", "answers": [], "is_impossible": True},
    ])
    from_json = read_questions(uri)
    rows = [{"id": "q1", "question": "When was it finished?", "context": CONTEXT,
             "answers": {"text": ["1889"], "answer_start": [26]}},
            {"id": "q2", "question": "Who built it?", "context": CONTEXT, "answers": {"text": [], "answer_start": []}}]
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from_jsonl = read_questions(str(tmp_path / "dev.jsonl"))
    assert from_json == from_jsonl
    assert from_json[0].answers == ["1889"] and from_json[1].answers == []


@pytest.mark.parametrize("qas, message", [
    ([{"id": "q1", "question": "When?", "answers": [{"text": "1889", "answer_start": 20}]}],
     "question 'q1': answer '1889' is not at answer_start 20 of its context (found"),
    ([{"id": "q1", "question": " ", "answers": []}], "question 'q1': field 'question' is empty"),
    ([{"id": "q1", "question": "When?", "answers": [{"text": "1889"}]}], "each answer needs 'text' and 'answer_start'"),
])
def test_bad_questions_are_one_line_naming_the_question(tmp_path, qas, message):
    with pytest.raises(InputError) as error:
        read_questions(squad_file(tmp_path, qas))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_empty_context_and_a_file_that_is_not_squad_shaped_are_refused(tmp_path):
    with pytest.raises(InputError, match="field 'context' is empty"):
        read_questions(squad_file(tmp_path, [{"id": "q", "question": "Why?", "answers": []}], context=""))
    (tmp_path / "other.json").write_text(json.dumps({"rows": [1, 2]}))
    with pytest.raises(InputError, match="other.json: not SQuAD-shaped JSON"):
        read_questions(str(tmp_path / "other.json"))


def test_a_long_context_is_split_into_windows_and_the_answer_is_found_in_the_one_that_holds_it(tmp_path, sentences):
    tokenizer = electra_core.train_tokenizer(sentences + [CONTEXT] * 5, vocab_size=300)
    filler = " ".join(sentences[:12])
    context = f"{filler} The tower was finished in 1889 in Paris. {filler}"
    start = context.index("1889")
    uri = squad_file(tmp_path, [{"id": "q", "question": "When was the tower finished?",
                                 "answers": [{"text": "1889", "answer_start": start}]}], context=context)
    [example] = read_questions(uri)
    parts = windows(tokenizer, example, max_seq_len=48, doc_stride=16)
    assert len(parts) > 3 and all(len(w.input_ids) <= 48 for w in parts)
    holding = [w for w in parts if w.start_position > 0]
    assert holding, "no window holds the answer"
    for window in holding:
        begin, end = window.offsets[window.start_position][0], window.offsets[window.end_position][1]
        assert context[begin:end] == "1889"
    assert all(w.start_position == w.end_position == 0 for w in parts if w not in holding)

    # Logits that favour the answer in one window and a wrong, lower-scoring span in another.
    starts, ends = [], []
    for number, window in enumerate(parts):
        s, e = [0.0] * len(window.input_ids), [0.0] * len(window.input_ids)
        if window is holding[0]:
            s[window.start_position], e[window.end_position] = 5.0, 5.0
        elif number == 0:
            s[len(window.input_ids) - 3], e[len(window.input_ids) - 2] = 3.0, 3.0
        s[0], e[0] = 1.0, 1.0
        starts.append(s)
        ends.append(e)
    answer = best_answer(example, parts, starts, ends)
    assert (answer.text, answer.start, answer.score, answer.null_score) == ("1889", start, 10.0, 2.0)


def test_the_best_span_keeps_to_the_maximum_answer_length(tmp_path, sentences):
    tokenizer = electra_core.train_tokenizer(sentences + [CONTEXT] * 5, vocab_size=300)
    [example] = read_questions(squad_file(tmp_path, [{"id": "q", "question": "What?", "answers": []}]))
    [window] = windows(tokenizer, example, max_seq_len=64, doc_stride=32)
    first_context = window.token_type_ids.index(1)
    s, e = [0.0] * len(window.input_ids), [0.0] * len(window.input_ids)
    s[first_context], e[len(s) - 2] = 9.0, 9.0  # the whole context: longer than 3 tokens
    e[first_context + 1] = 4.0
    answer = best_answer(example, [window], [s], [e], max_answer_len=3)
    # The 9 + 9 span is too long; the best allowed one is the first two context tokens (9 + 4).
    expected = CONTEXT[window.offsets[first_context][0]:window.offsets[first_context + 1][1]]
    assert (answer.score, answer.text, answer.start) == (13.0, expected, 0) and expected.startswith("The")
