"""What the progress line and metrics.jsonl tell a user about a run, checked against hand-computed values."""

import math

import pytest

from electra_core import ElectraConfig
from pipelines.pretrain.metrics import prior_loss, progress_line, training_flops_per_token


def test_the_prior_loss_is_the_entropy_of_the_replaced_fraction():
    assert prior_loss(0.5) == pytest.approx(math.log(2))
    assert prior_loss(0.146) == pytest.approx(0.4157, abs=1e-4)  # a discriminator at 0.416 has learned nothing
    assert prior_loss(0.0) == pytest.approx(0.0, abs=1e-9)


def test_the_progress_line_sets_the_discriminator_loss_beside_its_prior():
    record = {"step": 100, "loss": 22.3, "generator_accuracy": 0.05, "discriminator_accuracy": 0.87,
              "discriminator_loss": 0.283, "discriminator_prior_loss": 0.416, "lr": 7.4e-4, "grad_norm": 1.5,
              "tokens_per_s": 8000.0, "samples_per_s": 62.5}
    line = progress_line(record)
    assert "disc loss 0.283 (prior 0.416)" in line and "|g| 1.50" in line and "8,000 tok/s" in line


def test_flops_per_token_count_both_models_and_fall_with_a_smaller_generator():
    small = ElectraConfig.from_preset("small", vocab_size=30522)
    # 6 x parameters is the usual estimate for a dense transformer; ours adds attention and the two models
    electra = training_flops_per_token(small, 128)
    mlm = training_flops_per_token(small.replace(objective="mlm"), 128)
    assert 0 < mlm < electra < 2 * mlm
