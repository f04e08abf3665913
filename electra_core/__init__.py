"""ELECTRA in pure PyTorch + tokenizers: config, models, masking, tokenizer, Hugging Face interop.

Never imports ray, deepspeed or mlflow; those live in `pipelines`. Names are loaded on first use, so
code that needs only the tokenizer or the config (the prepare stage's actors) does not pay torch's
import time.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PRESETS": "electra_core.config",
    "ElectraConfig": "electra_core.config",
    "ElectraModel": "electra_core.modeling",
    "ElectraForPreTraining": "electra_core.modeling",
    "ElectraForMaskedLM": "electra_core.modeling",
    "ElectraForSequenceClassification": "electra_core.modeling",
    "ElectraForTokenClassification": "electra_core.modeling",
    "ElectraForQuestionAnswering": "electra_core.modeling",
    "QuestionAnsweringOutput": "electra_core.modeling",
    "ElectraPretrainingModel": "electra_core.modeling",
    "ModelOutput": "electra_core.modeling",
    "PretrainingOutput": "electra_core.modeling",
    "load_tokenizer": "electra_core.tokenizer",
    "save_tokenizer": "electra_core.tokenizer",
    "special_token_ids": "electra_core.tokenizer",
    "train_tokenizer": "electra_core.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'electra_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
