"""A fine-tune output served as it is, in PyTorch: the same tokenizer and answers as OnnxClassifier."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from electra_core import ElectraForSequenceClassification
from pipelines.deploy.onnx_classifier import TextClassifier


class TorchClassifier(TextClassifier):
    def __init__(self, directory: str, threads: int | None = None):
        with open(os.path.join(directory, "finetune_config.json")) as handle:
            max_seq_len = json.load(handle)["max_seq_len"]
        with open(os.path.join(directory, "metrics.json")) as handle:
            task_type = json.load(handle)["task_type"]
        super().__init__(directory, task_type, max_seq_len)
        if threads:
            torch.set_num_threads(threads)
        self.model = ElectraForSequenceClassification.from_pretrained(directory).eval()

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {key: torch.from_numpy(value) for key, value in encoded.items()}
        with torch.no_grad():
            return self.model(tensors["input_ids"], tensors["attention_mask"],
                              tensors["token_type_ids"]).logits.float().numpy()
