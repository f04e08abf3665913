"""`electra finetune`: fine-tune a pretrained discriminator on a labeled task and evaluate it."""

from pipelines.finetune.stage import run_finetune

__all__ = ["run_finetune"]
