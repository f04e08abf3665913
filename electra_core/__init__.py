"""ELECTRA in pure PyTorch + tokenizers: config, models, masking, tokenizer, Hugging Face interop.

Never imports ray, deepspeed or mlflow; those live in `pipelines`.
"""

from electra_core.config import PRESETS, ElectraConfig
from electra_core.modeling import (
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForSequenceClassification,
    ElectraModel,
    ElectraPretrainingModel,
    ModelOutput,
    PretrainingOutput,
)
from electra_core.tokenizer import load_tokenizer, save_tokenizer, special_token_ids, train_tokenizer

__all__ = [
    "PRESETS",
    "ElectraConfig",
    "ElectraForMaskedLM",
    "ElectraForPreTraining",
    "ElectraForSequenceClassification",
    "ElectraModel",
    "ElectraPretrainingModel",
    "ModelOutput",
    "PretrainingOutput",
    "load_tokenizer",
    "save_tokenizer",
    "special_token_ids",
    "train_tokenizer",
]
