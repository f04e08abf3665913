"""The parallelism policy: which ZeRO stage, precision and clipping each run gets, and what DeepSpeed is told."""

from __future__ import annotations

import pytest

from electra_core import ElectraConfig, ElectraPretrainingModel
from pipelines.config import PretrainConfig
from pipelines.pretrain.parallelism import (clips_in_loop, deepspeed_config, effective_zero_stage,
                                           register_parameters_read_outside_their_modules)


def config(**settings) -> PretrainConfig:
    return PretrainConfig(global_batch_size=16, micro_batch_size=4, **settings)


@pytest.mark.parametrize("precision, stage, workers, expected", [
    ("fp32", 2, 1, 0),  # one rank: nothing to shard
    ("fp32", 3, 2, 3),
    ("fp32", 0, 2, 0),
    ("bf16", 2, 1, 1),  # bf16 keeps fp32 masters: DeepSpeed's BF16 optimizer, which is its stage 1
    ("bf16", 0, 2, 1),
    ("bf16", 3, 2, 3),
    ("fp32", None, 2, 0),  # unset: the fastest measured (benchmarks/zero_stages.py)
    ("bf16", None, 2, 1),
    ("bf16", None, 1, 1),
])
def test_the_stage_deepspeed_runs(precision, stage, workers, expected):
    settings = config(precision=precision, zero_stage=stage, workers=workers)
    assert effective_zero_stage(settings, workers) == expected
    assert deepspeed_config(settings, workers)["zero_optimization"]["stage"] == expected


def test_fp32_plain_data_parallelism_clips_in_the_loop_and_everything_else_in_deepspeed():
    assert clips_in_loop(config(precision="fp32"), 1)
    assert deepspeed_config(config(precision="fp32"), 1)["gradient_clipping"] == 0.0
    for settings, workers in ((config(precision="bf16"), 1), (config(precision="fp32", workers=2, zero_stage=2), 2)):
        assert not clips_in_loop(settings, workers)
        assert deepspeed_config(settings, workers)["gradient_clipping"] == 1.0


def test_bf16_accumulates_and_reduces_gradients_in_fp32():
    bf16 = deepspeed_config(config(precision="bf16", workers=2), 2)
    assert bf16["bf16"]["enabled"] and not bf16["fp16"]["enabled"]
    assert bf16["communication_data_type"] == "fp32" and bf16["data_types"]["grad_accum_dtype"] == "fp32"
    fp16 = deepspeed_config(config(precision="fp16", gpus_per_worker=1, workers=2), 2)
    assert fp16["fp16"]["enabled"] and "data_types" not in fp16  # DeepSpeed's loss-scaled fp16 path as it is
    fp32 = deepspeed_config(config(precision="fp32", workers=2), 2)
    assert not fp32["bf16"]["enabled"] and "communication_data_type" not in fp32


def test_deepspeed_accepts_every_config_the_policy_writes():
    from deepspeed.runtime.config import DeepSpeedConfig

    for precision, gpus in (("fp32", 0), ("bf16", 0), ("fp16", 1)):
        for stage in (0, 1, 2, 3):
            settings = config(precision=precision, gpus_per_worker=gpus, zero_stage=stage)
            parsed = DeepSpeedConfig(deepspeed_config(settings, 1))
            assert parsed.zero_optimization_stage == effective_zero_stage(settings, 1)


def test_zero3_is_told_about_the_fused_attention_weights():
    model = ElectraPretrainingModel(ElectraConfig.from_preset("tiny"))
    layers = model.config.num_hidden_layers + model.generator.config.num_hidden_layers
    assert register_parameters_read_outside_their_modules(model) == 6 * layers
    attention = model.discriminator.electra.encoder.layer[0].attention.self
    registered = {id(p) for p in attention._external_params.values()}
    assert registered == {id(p) for linear in (attention.query, attention.key, attention.value)
                          for p in linear.parameters()}


def test_gradient_reduction_overlaps_the_backward_pass_on_gpus_only():
    gpu = deepspeed_config(config(precision="bf16", gpus_per_worker=1, workers=2, zero_stage=2), 2)
    assert gpu["zero_optimization"]["overlap_comm"] is True
    cpu = deepspeed_config(config(precision="bf16", workers=2, zero_stage=2), 2)
    assert "overlap_comm" not in cpu["zero_optimization"]
