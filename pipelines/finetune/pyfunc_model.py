"""The MLflow pyfunc face of a fine-tuned classifier (logged as "model from code": no pickle).

predict(DataFrame with a text column, and a pair column for pair tasks) -> DataFrame with `label` (the
task's own labels, strings when training used strings) and one probability column per label; regression
models return `label` with the predicted value.
"""

from __future__ import annotations

import json
import os

import mlflow
import pandas as pd
import torch

# This file is logged to MLflow as standalone code with only electra_core bundled beside it, so it cannot
# import pipelines.finetune: the column names below mirror pipelines/finetune/data.py.
TEXT_COLUMNS = ("sentence", "text", "sentence1", "question", "premise", "question1")
PAIR_COLUMNS = ("sentence2", "text_pair", "question2", "hypothesis")


class ElectraClassifierModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from electra_core import ElectraForSequenceClassification, load_tokenizer

        directory = context.artifacts["classifier"]
        self.model = ElectraForSequenceClassification.from_pretrained(directory).eval()
        self.tokenizer = load_tokenizer(directory)
        with open(os.path.join(directory, "finetune_config.json")) as handle:
            max_seq_len = json.load(handle)["max_seq_len"]
        self.tokenizer.enable_truncation(max_length=max_seq_len)  # as in training, the ONNX export and serving
        with open(os.path.join(directory, "metrics.json")) as handle:
            metrics = json.load(handle)
        self.task_type, self.labels, self.kind = metrics["task_type"], metrics["labels"], metrics["label_kind"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        text = next((c for c in TEXT_COLUMNS if c in model_input.columns), model_input.columns[0])
        pair = next((c for c in PAIR_COLUMNS if c in model_input.columns), None)
        texts = model_input[text].astype(str).tolist()
        inputs = texts if pair is None else list(zip(texts, model_input[pair].astype(str).tolist()))
        encodings = self.tokenizer.encode_batch(inputs)
        length = max(len(e.ids) for e in encodings)
        input_ids = torch.zeros((len(encodings), length), dtype=torch.long)
        token_type_ids = torch.zeros_like(input_ids)
        attention_mask = torch.zeros_like(input_ids)
        for row, encoding in enumerate(encodings):
            input_ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
            token_type_ids[row, : len(encoding.ids)] = torch.tensor(encoding.type_ids)
            attention_mask[row, : len(encoding.ids)] = 1
        with torch.no_grad():
            logits = self.model(input_ids, attention_mask, token_type_ids).logits.float()
        if self.task_type == "regression":
            return pd.DataFrame({"label": logits[:, 0].tolist()})
        probabilities = torch.softmax(logits, dim=-1)
        names = [int(n) if self.kind == "int" else n for n in self.labels]
        frame = pd.DataFrame({"label": [names[i] for i in probabilities.argmax(-1).tolist()]})
        for index, name in enumerate(self.labels):
            frame[name] = probabilities[:, index].tolist()
        return frame


mlflow.models.set_model(ElectraClassifierModel())
