"""`electra pretrain`: Ray Train V2 + DeepSpeed ZeRO pretraining with fault-tolerant checkpoints."""

from pipelines.pretrain.stage import run_pretrain

__all__ = ["run_pretrain"]
