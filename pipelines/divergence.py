"""Steps whose loss or gradients are not finite: skipped as loss scalers skip them, counted, and a run that keeps
producing them stopped with one line instead of training on (and exporting) NaNs.

Workers count on the device and the host reads the counts only at log lines, so a step has no extra sync. A
worker that gives up writes DIVERGED_FILE into the stage's output and returns normally (an exception would make
Ray Train restart the workers, which would diverge again); the driver turns that file into TrainingDiverged.
"""

from __future__ import annotations

import json

import torch

from electra_core import storage
from pipelines.errors import InputError

DIVERGED_FILE = "diverged.json"


class TrainingDiverged(InputError):
    """The loss or gradient norm stayed inf or NaN for the configured number of steps in a row: the run stopped
    and nothing was exported. Exit status 2 like bad input: running the same command again with the same settings
    diverges again; a setting (most often the learning rate) has to change."""


class Diverged(Exception):
    """Raised inside a training function when its guard gives up; carries what the stage reports."""

    def __init__(self, step: int, limit: int):
        super().__init__(f"{limit} steps in a row by step {step} had a non-finite loss or gradient norm")
        self.step, self.limit = step, limit


class NonFiniteGuard:
    """Skips the optimizer update of a step whose gradient norm is inf or NaN, and counts such steps.

    The skip happens on the device: torch's fused optimizers leave parameters, moments and step count untouched
    when their `found_inf` attribute (the flag torch.amp.GradScaler sets) is nonzero. DeepSpeed's ZeRO and bf16
    optimizers skip such steps themselves and say so on the host (`count_skipped`).
    """

    def __init__(self, limit: int, device):
        self.limit = limit
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self._streak, self._skipped = zero.clone(), zero.clone()
        self._reached = torch.zeros((), dtype=torch.bool, device=device)
        self.total = 0

    def skip_if_nonfinite(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> None:
        """Before optimizer.step(): arms the optimizer to skip this step when grad_norm (from clip_grad_norm_,
        so also NaN when the loss was) is not finite."""
        bad = ~torch.isfinite(grad_norm)
        optimizer.found_inf = bad.float()
        self._count(bad.long())

    def count_skipped(self, skipped: bool) -> None:
        self._count(torch.full_like(self._streak, int(skipped)))

    def _count(self, bad: torch.Tensor) -> None:
        self._streak = (self._streak + 1) * bad  # back to 0 at the first finite step
        self._reached = self._reached | (self._streak >= self.limit)
        self._skipped = self._skipped + bad

    def read(self) -> tuple[int, bool]:
        """(steps skipped since the last read, whether `limit` of them came in a row so far): one host sync."""
        skipped, reached = torch.stack([self._skipped, self._reached.long()]).tolist()
        self._skipped = torch.zeros_like(self._skipped)
        self.total += skipped
        return skipped, bool(reached)


def clear_divergence(output_uri: str) -> None:
    """On the driver before training: a record left by an earlier diverged run of the same output."""
    uri = storage.join(output_uri, DIVERGED_FILE)
    if storage.exists(uri):
        storage.delete(uri)


def record_divergence(output_uri: str, diverged: Diverged, **details) -> None:
    """On rank 0 of a worker group that gave up."""
    record = {"step": diverged.step, "limit": diverged.limit, **details}
    storage.write_text(storage.join(output_uri, DIVERGED_FILE), json.dumps(record, indent=2) + "\n")


def raise_if_diverged(output_uri: str, stage: str, advice: str) -> None:
    """On the driver after training: TrainingDiverged with one line when the workers gave up."""
    try:
        record = json.loads(storage.read_text(storage.join(output_uri, DIVERGED_FILE)))
    except FileNotFoundError:
        return
    where = f" in the {record['start']} trial (seed {record['seed']})" if "start" in record else ""
    raise TrainingDiverged(
        f"{output_uri}: training diverged{where}: the loss or gradient norm was not finite for {record['limit']} "
        f"steps in a row by step {record['step']} ({stage}.max_nonfinite_steps); no model was saved. {advice}")
