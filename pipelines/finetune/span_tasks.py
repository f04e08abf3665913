"""The span tasks' side of a trial (#17): token classification and extractive question answering, with the
methods train_trial asks of a task (pipelines.finetune.loop.EncodedTask is the sentence tasks' side).

Both read their files on the worker, from storage: only settings and the tag set travel in the loop's config.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from electra_core.modeling import token_cross_entropy
from electra_core.question_answering import Answer, Window, best_answer, windows
from electra_core.tagging import word_starts
from pipelines.config import FinetuneConfig
from pipelines.finetune.loop import collate
from pipelines.finetune.qa_data import read_questions
from pipelines.finetune.span_metrics import best_null_threshold, squad_metrics, tagging_metrics
from pipelines.finetune.tagging_data import IGNORED, align_tags, read_tagged


@dataclass
class TaggedTask:
    """Token classification (#17): sentences as token ids with a tag id on each word's first sub-word (IGNORED
    elsewhere), scored per word as tagging_metrics defines it. Words past max_seq_len get no prediction from
    the model; they are scored as tagged `fill_tag` ("O" where the tag set has it), so truncation costs recall
    instead of vanishing from the score."""

    train: list[tuple[list[int], list[int]]]
    train_labels: list[list[int]]
    evaluation: list[tuple[list[int], list[int]]]
    eval_starts: list[list[tuple[int, int]]]
    eval_words: list[list[str]]
    eval_tags: list[list[str]]
    tag_names: list[str]
    fill_tag: str
    metric: str
    pad_id: int
    task_type: str = "token-classification"

    @classmethod
    def from_files(cls, tokenizer, config: FinetuneConfig, tag_names: list[str], metric: str) -> "TaggedTask":
        """Reads the tagged files itself (on the worker: the sentences do not travel in the loop's config)."""
        tokenizer.enable_truncation(max_length=config.max_seq_len)
        tokenizer.no_padding()
        ids = {name: index for index, name in enumerate(tag_names)}
        train, evaluation = read_tagged(config.train, config.strict), read_tagged(config.eval, config.strict)
        train_examples = align_tags(tokenizer, train.words, [[ids[t] for t in tags] for tags in train.tags])
        encoded = tokenizer.encode_batch(evaluation.words, is_pretokenized=True)
        return cls(
            train=[(i, t) for i, t, _ in train_examples], train_labels=[labels for *_, labels in train_examples],
            evaluation=[(e.ids, e.type_ids) for e in encoded], eval_starts=[word_starts(e.word_ids) for e in encoded],
            eval_words=evaluation.words, eval_tags=evaluation.tags, tag_names=tag_names,
            fill_tag=fill_tag(tag_names, train.tags), metric=metric, pad_id=tokenizer.token_to_id("[PAD]") or 0,
        )

    @property
    def num_labels(self) -> int:
        return len(self.tag_names)

    def targets(self, indices, device) -> torch.Tensor:
        rows = [self.train_labels[i] for i in indices]
        targets = torch.full((len(rows), max(len(r) for r in rows)), IGNORED, dtype=torch.long)
        for row, labels in enumerate(rows):
            targets[row, : len(labels)] = torch.tensor(labels)
        return targets.to(device)

    def loss(self, output, targets: torch.Tensor) -> torch.Tensor:
        return token_cross_entropy(output.logits, targets)

    def predict(self, model, device, batch_size: int = 128) -> list[np.ndarray]:
        """Each eval sentence's logits at its words' first sub-words (eval_starts), in word order."""
        model.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, len(self.evaluation), batch_size):
                batch = collate(self.evaluation[start: start + batch_size], self.pad_id, device)
                logits = model(**batch).logits.float().cpu().numpy()
                for row, starts in enumerate(self.eval_starts[start: start + batch_size]):
                    outputs.append(logits[row, [position for position, _ in starts]])
        model.train()
        return outputs

    def predicted_tags(self, logits: list[np.ndarray]) -> list[list[str]]:
        sentences = []
        for rows, starts, words in zip(logits, self.eval_starts, self.eval_words):
            tags = [self.fill_tag] * len(words)
            for row, (_, word) in zip(rows, starts):
                tags[word] = self.tag_names[int(row.argmax())]
            sentences.append(tags)
        return sentences

    def score(self, logits: list[np.ndarray]) -> dict[str, float]:
        metrics = tagging_metrics(self.eval_tags, self.predicted_tags(logits))
        return {k: v for k, v in metrics.items() if isinstance(v, float)}  # the scheme goes in metrics.json

    def saved_settings(self, loop_config: dict) -> dict:
        return {"tag_scheme": loop_config["tag_scheme"], "fill_tag": self.fill_tag}

    def prediction_lines(self, logits: list[np.ndarray], loop_config: dict) -> list[dict]:
        return [{"tokens": words, "tags": gold, "prediction": predicted}
                for words, gold, predicted in zip(self.eval_words, self.eval_tags, self.predicted_tags(logits))]


def fill_tag(tag_names: list[str], train_tags: list[list[str]]) -> str:
    """The tag a word past max_seq_len is scored as: O where the tag set has it, else the commonest tag."""
    if "O" in tag_names:
        return "O"
    counts = collections.Counter(tag for sentence in train_tags for tag in sentence)
    return counts.most_common(1)[0][0]


@dataclass
class QuestionTask:
    """Extractive question answering: each question's context split into windows of max_seq_len tokens that
    start doc_stride tokens apart; a window is trained on the answer's first and last token, or on [CLS] (0)
    when the answer is not inside it. A question's answer is the best span over its windows (at most
    max_answer_len tokens). When the training data has unanswerable questions (SQuAD 2.0), a question is
    answered "" when its no-answer score beats the best span's by more than a threshold tuned on the eval set,
    as the reference does."""

    train: list[tuple[list[int], list[int]]]
    train_positions: torch.Tensor  # (windows, 2): start and end token
    evaluation: list[tuple[list[int], list[int]]]  # every window of every eval question, question by question
    eval_windows: list[list[Window]]  # per question
    eval_questions: list
    max_answer_len: int
    answers_null: bool
    metric: str
    pad_id: int
    task_type: str = "question-answering"
    num_labels: int = 2

    @classmethod
    def from_files(cls, tokenizer, config: FinetuneConfig, metric: str) -> "QuestionTask":
        tokenizer.no_truncation()  # windows() splits long contexts itself
        tokenizer.no_padding()
        train, evaluation = read_questions(config.train), read_questions(config.eval)
        train_windows = [w for q in train for w in windows(tokenizer, q, config.max_seq_len, config.doc_stride)]
        eval_windows = [windows(tokenizer, q, config.max_seq_len, config.doc_stride) for q in evaluation]
        return cls(
            train=[(w.input_ids, w.token_type_ids) for w in train_windows],
            train_positions=torch.tensor([[w.start_position, w.end_position] for w in train_windows]),
            evaluation=[(w.input_ids, w.token_type_ids) for ws in eval_windows for w in ws],
            eval_windows=eval_windows, eval_questions=evaluation, max_answer_len=config.max_answer_len,
            answers_null=any(not q.answers for q in train), metric=metric,
            pad_id=tokenizer.token_to_id("[PAD]") or 0,
        )

    def targets(self, indices, device) -> torch.Tensor:
        return self.train_positions[indices].to(device)

    def loss(self, output, targets: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(output.start_logits, targets[:, 0]) + F.cross_entropy(output.end_logits, targets[:, 1])) / 2

    def predict(self, model, device, batch_size: int = 64) -> list[Answer]:
        """Each eval question's best span over its windows (with its no-answer score)."""
        model.eval()
        starts, ends = [], []
        with torch.no_grad():
            for first in range(0, len(self.evaluation), batch_size):
                examples = self.evaluation[first: first + batch_size]
                output = model(**collate(examples, self.pad_id, device))
                for row, (ids, _) in enumerate(examples):
                    starts.append(output.start_logits[row, : len(ids)].float().cpu().numpy())
                    ends.append(output.end_logits[row, : len(ids)].float().cpu().numpy())
        model.train()
        answers, window = [], 0
        for question, question_windows in zip(self.eval_questions, self.eval_windows):
            count = len(question_windows)
            answers.append(best_answer(question, question_windows, starts[window: window + count],
                                       ends[window: window + count], self.max_answer_len))
            window += count
        return answers

    def answered(self, answers: list[Answer], threshold: float | None) -> list[str]:
        if threshold is None:
            return [a.text for a in answers]
        return [a.text if a.null_score - a.score <= threshold else "" for a in answers]

    def null_threshold(self, answers: list[Answer]) -> float | None:
        if not self.answers_null:
            return None
        return best_null_threshold([a.text for a in answers], [a.null_score - a.score for a in answers],
                                   [q.answers for q in self.eval_questions], self.metric)

    def score(self, answers: list[Answer]) -> dict[str, float]:
        threshold = self.null_threshold(answers)
        metrics = squad_metrics(self.answered(answers, threshold), [q.answers for q in self.eval_questions])
        if threshold is not None:
            metrics["null_threshold"] = float(threshold)
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}

    def saved_settings(self, loop_config: dict) -> dict:
        return {"answers_null": self.answers_null}

    def prediction_lines(self, answers: list[Answer], loop_config: dict) -> list[dict]:
        threshold = self.null_threshold(answers)
        return [{"id": q.id, "question": q.question, "answers": q.answers, "prediction": text,
                 "score": answer.score, "null_score": answer.null_score, "start": answer.start if text else -1}
                for q, answer, text in zip(self.eval_questions, answers, self.answered(answers, threshold))]
