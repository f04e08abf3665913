"""An exported classifier, run with onnxruntime, tokenizers and numpy alone (no torch, no project code beyond
this file): what a CPU pod, a phone's Python or a serving replica loads.

    classifier = OnnxClassifier("exported/")
    classifier.predict(["a sentence", ...])            # or [("first", "second"), ...] for pair tasks
    -> [{"label": "positive", "scores": {"negative": 0.1, "positive": 0.9}}, ...]

Inputs longer than max_seq_len tokens (export.json) are truncated, as in training.
"""

from __future__ import annotations

import json
import os

import numpy as np

MODEL_FILE, METADATA_FILE = "model.onnx", "export.json"


class TextClassifier:
    """What every served classifier shares: the fine-tune's tokenizer (truncating at max_seq_len, padding to the
    longest input), its labels (config.json's id2label) and the answers made from logits. A subclass runs the
    model: `run(encoded) -> logits`."""

    def __init__(self, directory: str, task_type: str, max_seq_len: int):
        from tokenizers import Tokenizer

        with open(os.path.join(directory, "config.json")) as handle:
            config = json.load(handle)
        self.task_type = task_type
        self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        pad_id = config.get("pad_token_id", 0)
        self.tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id))  # to the longest
        self.tokenizer.enable_truncation(max_length=max_seq_len)

    def encode(self, inputs: list) -> dict[str, np.ndarray]:
        """Token ids, type ids and attention mask of the inputs, padded to the longest one."""
        encodings = self.tokenizer.encode_batch([tuple(item) if isinstance(item, list) else item for item in inputs])
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def logits(self, inputs: list) -> np.ndarray:
        return self.run(self.encode(inputs))

    def predict(self, inputs: list) -> list[dict]:
        """One answer per input, in the task's own labels (regression: the predicted value)."""
        logits = self.logits(inputs)
        if self.task_type == "regression":
            return [{"value": float(row[0])} for row in logits]
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        return [{"label": self.labels[int(row.argmax())],
                 "scores": {label: float(p) for label, p in zip(self.labels, row)}} for row in scores]


class OnnxClassifier(TextClassifier):
    def __init__(self, directory: str, threads: int | None = None):
        import onnxruntime

        with open(os.path.join(directory, METADATA_FILE)) as handle:
            self.metadata = json.load(handle)
        super().__init__(directory, self.metadata["task_type"], self.metadata["max_seq_len"])
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(os.path.join(directory, MODEL_FILE), options,
                                                    providers=["CPUExecutionProvider"])

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], encoded)[0]
