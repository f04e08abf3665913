"""One pretraining step as every loop of the project runs it: the Ray/torchrun trainer, the plain-loop baseline of
benchmarks/train_overhead.py and the GPU check (benchmarks/gpu_step.py), so that what they measure is the same
step. Needs torch and electra_core only (the GPU machine has no Ray and no DeepSpeed).

Everything random in a micro-batch is derived from (seed, step, its place in the global batch): dropout from
torch's global generator, masking and sampling from a generator of the step's own, drawn before the model runs
so that the model itself is one fixed-shape graph (`torch.compile(fullgraph=True)`).
"""

from __future__ import annotations

import hashlib

import torch

from electra_core.modeling import takes_weight_decay
from pipelines.config import PretrainConfig


def derived_seed(*parts) -> int:
    """A 63-bit seed from any values: stable across processes and machines (unlike hash())."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def learning_rate(config: PretrainConfig, step: int, segment_start: int = 0) -> float:
    """Linear warmup to the peak, then linear decay to zero at max_steps (step counts from 0).

    A run continued on new data (scheduled retraining) starts a segment at `segment_start`: the schedule
    warms up again over the segment's own steps and decays to zero at its end, the same shape as a fresh run.
    """
    length = config.max_steps - segment_start
    warmup = config.warmup_steps if config.warmup_steps is not None else min(10_000, length // 10)
    local = step - segment_start
    if local < warmup:
        return config.peak_lr * (local + 1) / warmup
    return config.peak_lr * max(0.0, (length - local) / max(1, length - warmup))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, not on biases and LayerNorm weights (as ELECTRA and BERT)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if takes_weight_decay(name) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def gradient_norm(parameters, max_norm: float) -> torch.Tensor:
    """The global gradient norm (before clipping), clipping to max_norm when it is positive: 0 means no
    clipping, as in DeepSpeed's gradient_clipping (torch's clip to 0 would zero every gradient)."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])


class MicroBatchForward:
    """The forward pass of one micro-batch: seeds, the masking draw, the padding decision, the model call.

    `model` is what is called (a DeepSpeed engine, a compiled module or the module itself); `module` is the
    ElectraPretrainingModel underneath, which draws the masking noise.
    """

    def __init__(self, model, module, seed: int, device: torch.device):
        self.model, self.module, self.seed, self.device = model, module, seed, device
        self.generator = torch.Generator(device=device)

    def __call__(self, batch: dict[str, torch.Tensor], step: int, index: int):
        """(the model's output, the batch on the device). `index` is the micro-batch's place in the global
        batch (micro * world_size + rank), so each rank's share has its own draws whatever the world size."""
        padded = bool(batch["attention_mask"].min() == 0)  # decided on the host copy: no device sync
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        seed = derived_seed(self.seed, step, index)
        torch.manual_seed(seed)  # dropout
        self.generator.manual_seed(seed ^ 0x5DEECE66D)  # masking and sampling, drawn outside the (compiled) model
        noise = self.module.masking_noise(batch["input_ids"], self.generator)
        return self.model(**batch, noise=noise, padded=padded), batch
