"""What the progress line and metrics.jsonl tell a user about a run, checked against hand-computed values."""

import math

import pytest

from electra_core import ElectraConfig
from pipelines.pretrain.metrics import (discriminator_against_prior, prior_loss, prior_warning, progress_line,
                                       training_flops_per_token)


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


def records(losses: list[float], prior: float = 0.416) -> list[dict]:
    return [{"step": 50 * (i + 1), "discriminator_loss": loss, "discriminator_prior_loss": prior}
            for i, loss in enumerate(losses)]


def test_a_discriminator_back_at_its_prior_over_the_last_quarter_is_flagged_and_explained():
    # The demo's old curve: it learns token identity early, then the generator catches up and it returns to the prior.
    check = discriminator_against_prior(records([0.65, 0.36, 0.29, 0.33, 0.36, 0.39, 0.40, 0.40]))
    assert check["at_prior"] and (check["from_step"], check["to_step"]) == (350, 400)
    assert check["discriminator_loss"] == pytest.approx(0.40)
    message = prior_warning(check)
    assert "stayed at its prior over steps 350-400 (0.400 against 0.416" in message and "\n" not in message


def test_a_discriminator_well_below_its_prior_is_not_flagged():
    check = discriminator_against_prior(records([0.65, 0.40, 0.35, 0.30, 0.28, 0.27, 0.26, 0.25]))
    assert not check["at_prior"]
    assert discriminator_against_prior([{"step": 10, "loss": 3.0}]) is None  # masked-LM runs have no discriminator
