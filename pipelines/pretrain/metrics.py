"""Training metrics on rank 0: a progress line, metrics.jsonl in the run's storage, MLflow, a loss plot."""

from __future__ import annotations

import json
import logging
import math
import os
import time

import torch
import torch.distributed as dist

from electra_core import ElectraConfig, storage
from pipelines.pretrain.parallelism import collective_device

logger = logging.getLogger(__name__)

# Dense bf16 peak of the GPUs this pipeline is run on, for MFU; unknown devices get no MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def training_flops_per_token(config: ElectraConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token (3x forward), generator and discriminator, attention included."""

    def encoder(c: ElectraConfig) -> float:
        per_layer = 4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size
        projection = c.embedding_size * c.hidden_size if c.embedding_size != c.hidden_size else 0
        attention = 2 * seq_len * c.hidden_size  # QK^T and AV, per token per layer
        return 2 * (c.num_hidden_layers * (per_layer + attention) + projection)

    if config.objective == "mlm":
        generator = config
        discriminator = 0.0
    else:
        generator = config.generator_config()
        discriminator = encoder(config) + 2 * (config.hidden_size**2 + config.hidden_size)
    # The vocabulary projection runs at the masked positions only.
    vocabulary = 2 * config.mask_prob * (generator.hidden_size * generator.embedding_size
                                         + generator.embedding_size * generator.vocab_size)
    return 3 * (encoder(generator) + discriminator + vocabulary)


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


class MetricsLog:
    """Keeps every logged record; rewrites STORAGE/RUN/metrics.jsonl at checkpoints and at the end."""

    def __init__(self, run_uri: str, run_name: str, resume_step: int, tracking_uri: str | None, params: dict):
        self.uri = storage.join(run_uri, "metrics.jsonl")
        self.records = [r for r in self._existing() if r["step"] <= resume_step]
        self.mlflow = _start_mlflow(tracking_uri, run_name, params)

    def _existing(self) -> list[dict]:
        try:
            return [json.loads(line) for line in storage.read_text(self.uri).splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def log(self, record: dict) -> None:
        self.records.append(record)
        logger.info(progress_line(record))
        if self.mlflow is not None:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            self.mlflow.log_metrics(numbers, step=record["step"])

    def note(self, step: int, **values) -> None:
        """Adds values to the record of `step` (written with the next flush)."""
        if self.records and self.records[-1]["step"] == step:
            self.records[-1].update(values)

    def flush(self) -> None:
        storage.write_text(self.uri, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))

    def plot(self, uri: str) -> None:
        """A loss-curve PNG: the total loss, the generator's loss and, for ELECTRA, the discriminator's loss
        beside its prior (the loss of predicting only the base rate of replaced tokens)."""
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.records:
            return
        steps = [r["step"] for r in self.records]
        electra = "discriminator_loss" in self.records[-1]
        figure, axes = plt.subplots(1, 3 if electra else 2, figsize=(15 if electra else 10, 4))
        panels = [("loss", "training loss"), ("generator_loss", "generator (masked LM) loss")]
        for axis, (key, title) in zip(axes, panels):
            axis.plot(steps, [r.get(key) for r in self.records], label=key)
            axis.set_title(title)
        if electra:
            axes[2].plot(steps, [r.get("discriminator_loss") for r in self.records], label="discriminator_loss")
            axes[2].plot(steps, [r.get("discriminator_prior_loss") for r in self.records], "--",
                         label="prior (base rate only): no context learned")
            axes[2].set_title("discriminator loss and its prior")
        for axis in axes:
            axis.set_xlabel("step")
            axis.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        storage.write_bytes(uri, buffer.getvalue())

    def close(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()


def prior_loss(replaced_fraction: float) -> float:
    """The discriminator's loss when it only predicts the base rate of replaced tokens (binary entropy): a
    discriminator loss near it means it has learned nothing from context yet."""
    p = min(max(replaced_fraction, 1e-12), 1 - 1e-12)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


# A discriminator whose loss over the last quarter of the run is within 5% of its prior has learned next to
# nothing beyond the base rate of replaced tokens.
PRIOR_WINDOW, PRIOR_MARGIN = 0.25, 0.05


def discriminator_against_prior(records: list[dict]) -> dict | None:
    """The discriminator's mean loss and its prior over the last quarter of the logged steps, and whether it
    stayed at the prior (None for masked-LM runs and runs without records)."""
    records = [r for r in records if r.get("discriminator_loss") is not None]
    if not records:
        return None
    last = records[-max(1, round(len(records) * PRIOR_WINDOW)):]
    loss = sum(r["discriminator_loss"] for r in last) / len(last)
    prior = sum(r["discriminator_prior_loss"] for r in last) / len(last)
    return {"from_step": last[0]["step"], "to_step": last[-1]["step"], "discriminator_loss": loss,
            "prior_loss": prior, "at_prior": loss >= (1 - PRIOR_MARGIN) * prior}


def prior_warning(check: dict) -> str:
    return (f"warning: the discriminator's loss stayed at its prior over steps {check['from_step']}-"
            f"{check['to_step']} ({check['discriminator_loss']:.3f} against {check['prior_loss']:.3f} for guessing "
            f"the base rate of replaced tokens): it learned almost nothing from context, and the pretrained model "
            f"may fine-tune no better than random weights. Pretrain longer, with a larger model or a higher "
            f"mask_prob, and compare with finetune.baseline: scratch.")


def progress_line(r: dict) -> str:
    parts = [f"step {r['step']:>7}", f"loss {r['loss']:.4f}"]
    if "discriminator_accuracy" in r:
        parts.append(f"gen acc {r['generator_accuracy']:.3f}  disc acc {r['discriminator_accuracy']:.3f}  "
                     f"disc loss {r['discriminator_loss']:.3f} (prior {r['discriminator_prior_loss']:.3f})")
    else:
        parts.append(f"mlm acc {r['generator_accuracy']:.3f}")
    parts.append(f"lr {r['lr']:.2e}")
    if r.get("grad_norm") is not None:
        parts.append(f"|g| {r['grad_norm']:.2f}")
    parts.append(f"{r['tokens_per_s']:,.0f} tok/s  {r['samples_per_s']:,.1f} samples/s")
    if r.get("mfu") is not None:
        parts.append(f"MFU {r['mfu']:.1%}")
    if r.get("data_wait_s") is not None:
        parts.append(f"data wait {r['data_wait_s']:.2f} s")
    if r.get("skipped_steps"):
        parts.append(f"skipped {r['skipped_steps']} (non-finite)")
    return "  ".join(parts)


def _start_mlflow(tracking_uri: str | None, run_name: str, params: dict):
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        return None
    import mlflow

    from pipelines.secrets import keep_credentials_out_of_mlflow_output

    keep_credentials_out_of_mlflow_output(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("electra-pretrain")
    existing = mlflow.search_runs(filter_string=f"tags.electra_run = '{run_name}'", output_format="list")
    if existing:
        mlflow.start_run(run_id=existing[0].info.run_id)
    else:
        mlflow.start_run(run_name=run_name, tags={"electra_run": run_name})
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    return mlflow


class MetricsWindow:
    """Sums of the statistics since the last log line (rank 0's micro-batches; tokens over all ranks)."""

    def __init__(self) -> None:
        self.reset()
        self.last_record: dict = {}

    def reset(self) -> None:
        self.names: tuple[str, ...] = ()
        self.sums: torch.Tensor | None = None
        self.tokens: torch.Tensor | int = 0
        self.micro_batches = 0
        self.finite_micro_batches: torch.Tensor | int = 0
        self.samples = 0
        self.data_wait = 0.0  # seconds the training thread waited for its batches
        self.started = time.perf_counter()

    def add(self, output, attention_mask: torch.Tensor) -> None:
        # Summed on the device and read once per log line: no host sync in the training step.
        # A micro-batch whose loss was inf or NaN (its step is skipped) is left out of the averages.
        self.names, values = output.statistics()
        finite = torch.isfinite(values).all()
        values = torch.where(finite, values, torch.zeros_like(values))
        self.sums = values if self.sums is None else self.sums + values
        self.finite_micro_batches = self.finite_micro_batches + finite.long()
        self.tokens = self.tokens + attention_mask.sum()
        self.micro_batches += 1
        self.samples += attention_mask.shape[0]

    def record(self, step: int, lr: float, grad_norm: float | None, world_size: int, flops_per_token: float,
               peak: float | None, epoch: float) -> dict:
        elapsed = time.perf_counter() - self.started
        totals = torch.tensor([float(self.tokens), self.samples], dtype=torch.float64)
        if dist.is_initialized() and world_size > 1:
            totals = totals.to(collective_device())
            dist.all_reduce(totals)
        tokens, samples = totals.cpu().tolist()
        record = {
            "step": step,
            **dict(zip(self.names, (self.sums / self.finite_micro_batches).tolist())),
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": samples / elapsed,
            "epoch": epoch,
            "data_wait_s": self.data_wait,
        }
        if "replaced_fraction" in record:
            record["discriminator_prior_loss"] = prior_loss(record["replaced_fraction"])
        if peak:
            record["mfu"] = tokens / elapsed * flops_per_token / (peak * world_size)
        self.last_record = record
        self.reset()
        return record
