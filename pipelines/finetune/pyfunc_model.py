"""The MLflow pyfunc face of a fine-tuned model (logged as "model from code": no pickle).

Sentence tasks: predict(DataFrame with a text column, and a pair column for pair tasks) -> DataFrame with
`label` (the task's own labels, strings when training used strings) and one probability column per label;
regression models return `label` with the predicted value.
Token classification: predict(DataFrame with `tokens`, a list of words per row, or `text`, split on whitespace)
-> DataFrame with `tags` (one per word) and, for entity tag sets, `entities` (a list of {type, first, last},
word positions inclusive).
Question answering: predict(DataFrame with `question` and `context`) -> DataFrame with `answer` (the span's
text; "" for no answer), `score` (its start + end logit) and `start` (its character offset in the context; -1
for no answer).
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import mlflow
import pandas as pd
import torch

# This file is logged to MLflow as standalone code with only electra_core bundled beside it, so it cannot
# import pipelines.finetune: the column names below mirror pipelines/finetune/data.py.
TEXT_COLUMNS = ("sentence", "text", "sentence1", "question", "premise", "question1")
PAIR_COLUMNS = ("sentence2", "text_pair", "question2", "hypothesis")
TAGGING, QUESTIONS = "token-classification", "question-answering"


class ElectraClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from electra_core import (ElectraForQuestionAnswering, ElectraForSequenceClassification,
                                  ElectraForTokenClassification, load_tokenizer)

        directory = context.artifacts["classifier"]
        self.tokenizer = load_tokenizer(directory)
        with open(os.path.join(directory, "finetune_config.json")) as handle:
            self.settings = json.load(handle)
        with open(os.path.join(directory, "metrics.json")) as handle:
            metrics = json.load(handle)
        self.task_type, self.labels, self.kind = metrics["task_type"], metrics["labels"], metrics["label_kind"]
        self.fill_tag, self.tag_scheme = metrics.get("fill_tag"), metrics.get("tag_scheme")
        self.null_threshold = metrics["eval"].get("null_threshold")  # tuned on the eval set (SQuAD 2.0 data)
        if self.task_type != QUESTIONS:  # question windows are cut by the model's own rule, not truncation
            self.tokenizer.enable_truncation(max_length=self.settings["max_seq_len"])  # as in training and export
        model_class = {TAGGING: ElectraForTokenClassification, QUESTIONS: ElectraForQuestionAnswering}.get(
            self.task_type, ElectraForSequenceClassification)
        self.model = model_class.from_pretrained(directory).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if self.task_type == TAGGING:
            return self.tag(model_input)
        if self.task_type == QUESTIONS:
            return self.answer(model_input)
        text = next((c for c in TEXT_COLUMNS if c in model_input.columns), model_input.columns[0])
        pair = next((c for c in PAIR_COLUMNS if c in model_input.columns), None)
        texts = model_input[text].astype(str).tolist()
        inputs = texts if pair is None else list(zip(texts, model_input[pair].astype(str).tolist()))
        logits = self.logits(self.tokenizer.encode_batch(inputs))
        if self.task_type == "regression":
            return pd.DataFrame({"label": logits[:, 0].tolist()})
        probabilities = torch.softmax(logits, dim=-1)
        names = [int(n) if self.kind == "int" else n for n in self.labels]
        frame = pd.DataFrame({"label": [names[i] for i in probabilities.argmax(-1).tolist()]})
        for index, name in enumerate(self.labels):
            frame[name] = probabilities[:, index].tolist()
        return frame

    def tag(self, model_input: pd.DataFrame) -> pd.DataFrame:
        from electra_core.tagging import entity_spans, word_starts

        if "tokens" in model_input.columns:
            words = [[str(word) for word in row] for row in model_input["tokens"]]
        else:
            text = "text" if "text" in model_input.columns else model_input.columns[0]
            words = [str(value).split() for value in model_input[text]]
        # A row with no words gets no tags; the tokenizer is given one placeholder word so the batch stays whole.
        encodings = self.tokenizer.encode_batch([row or [""] for row in words], is_pretokenized=True)
        logits = self.logits(encodings)
        tags = []
        for row, (sentence, encoding) in enumerate(zip(words, encodings)):
            sentence_tags = [self.fill_tag] * len(sentence)  # words past max_seq_len, as the fine-tune scored them
            for position, word in word_starts(encoding.word_ids):
                if word < len(sentence):
                    sentence_tags[word] = self.labels[int(logits[row, position].argmax())]
            tags.append(sentence_tags)
        frame = pd.DataFrame({"tags": tags})
        if self.tag_scheme == "entity":
            frame["entities"] = [[{"type": kind, "first": first, "last": last}
                                  for kind, first, last in entity_spans(sentence)] for sentence in tags]
        return frame

    def answer(self, model_input: pd.DataFrame) -> pd.DataFrame:
        from electra_core.question_answering import best_answer, windows

        rows = []
        for number, (question, text) in enumerate(zip(model_input["question"].astype(str),
                                                      model_input["context"].astype(str))):
            example = SimpleNamespace(id=str(number), question=question, context=text, answers=[], starts=[])
            parts = windows(self.tokenizer, example, self.settings["max_seq_len"], self.settings["doc_stride"])
            output = self.forward([(w.input_ids, w.token_type_ids) for w in parts])
            lengths = [len(w.input_ids) for w in parts]
            found = best_answer(example, parts, [output.start_logits[i, :n] for i, n in enumerate(lengths)],
                                [output.end_logits[i, :n] for i, n in enumerate(lengths)],
                                self.settings["max_answer_len"])
            abstain = self.null_threshold is not None and found.null_score - found.score > self.null_threshold
            rows.append(("", found.null_score, -1) if abstain or not found.text else
                        (found.text, found.score, found.start))
        return pd.DataFrame(rows, columns=["answer", "score", "start"])

    def logits(self, encodings) -> torch.Tensor:
        return self.forward([(e.ids, e.type_ids) for e in encodings]).logits.float()

    def forward(self, inputs: list[tuple[list[int], list[int]]]):
        """The model on (token ids, type ids) pairs, padded to the longest."""
        length = max(len(ids) for ids, _ in inputs)
        input_ids = torch.zeros((len(inputs), length), dtype=torch.long)
        token_type_ids = torch.zeros_like(input_ids)
        attention_mask = torch.zeros_like(input_ids)
        for row, (ids, types) in enumerate(inputs):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            token_type_ids[row, : len(ids)] = torch.tensor(types)
            attention_mask[row, : len(ids)] = 1
        with torch.no_grad():
            return self.model(input_ids, attention_mask, token_type_ids)


mlflow.models.set_model(ElectraClassifierModel())
