"""Extractive question answering's windows and spans: a long context split into windows with a document stride
(as the reference and transformers split it), and the best answer span over all of a question's windows.

Pure Python + tokenizers, in electra_core because both the fine-tune (pipelines.finetune) and the registered
model's pyfunc (which bundles electra_core only) answer questions with it. A question is anything with `id`,
`question`, `context`, `answers` (texts; empty when unanswerable) and `starts` (their character offsets).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Window:
    """One model input: [CLS] question [SEP] part of the context [SEP]."""

    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # a context token's characters in the context; None elsewhere
    start_position: int  # the answer's first and last token, or 0 ([CLS]) when it is not inside this window
    end_position: int


def windows(tokenizer, example, max_seq_len: int, doc_stride: int,
            max_query_len: int = 64) -> list[Window]:
    """Windows of the context, each starting doc_stride tokens after the previous, so that every answer lies
    whole in at least one of them when it is shorter than a window (as the reference and transformers do)."""
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    question = tokenizer.encode(example.question, add_special_tokens=False).ids[:max_query_len]
    context = tokenizer.encode(example.context, add_special_tokens=False)
    room = max_seq_len - len(question) - 3
    if room < 1:
        raise ValueError(f"question {example.id!r}: max_seq_len {max_seq_len} leaves no room for the context "
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


def _answer_tokens(offsets: list[tuple[int, int]], example) -> tuple[int, int] | None:
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


def best_answer(example, example_windows: list[Window], start_logits: list, end_logits: list,
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
