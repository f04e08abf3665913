"""ElectraConfig: presets from the paper, validation with field names, Hugging Face config.json."""

from __future__ import annotations

import json

import pytest
import transformers

from electra_core import ElectraConfig


@pytest.mark.parametrize(
    "preset, shape",
    [
        ("small", (12, 256, 1024, 4, 128, 64)),
        ("base", (12, 768, 3072, 12, 768, 256)),
        ("large", (24, 1024, 4096, 16, 1024, 256)),
    ],
)
def test_presets_match_the_paper(preset, shape):
    config = ElectraConfig.from_preset(preset)
    generator = config.generator_config()
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
            config.embedding_size, generator.hidden_size) == shape
    assert generator.num_hidden_layers == config.num_hidden_layers
    assert generator.embedding_size == config.embedding_size
    assert config.mask_prob == (0.25 if preset == "large" else 0.15)
    assert config.vocab_size == 30522 and config.disc_loss_weight == 50.0


@pytest.mark.parametrize(
    "heads, fraction, generator_shape",
    [(2, 0.25, (32, 128, 1)), (2, 0.5, (64, 256, 1)), (4, 0.25, (32, 128, 1)), (8, 0.25, (32, 128, 2))],
)
def test_generator_width_follows_the_fraction_when_the_discriminator_has_few_heads(heads, fraction, generator_shape):
    config = ElectraConfig(hidden_size=128, intermediate_size=512, num_attention_heads=heads,
                           generator_size_fraction=fraction)
    generator = config.generator_config()
    assert (generator.hidden_size, generator.intermediate_size, generator.num_attention_heads) == generator_shape


def test_preset_overrides_apply_and_unknown_presets_are_refused():
    assert ElectraConfig.from_preset("small", vocab_size=8000).vocab_size == 8000
    with pytest.raises(ValueError, match="huge"):
        ElectraConfig.from_preset("huge")


@pytest.mark.parametrize(
    "field, value",
    [("hidden_size", 30), ("mask_prob", 1.5), ("objective", "gan"), ("vocab_size", 0), ("mask_token_id", 99)],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field if field != "hidden_size" else "num_attention_heads"):
        ElectraConfig.from_preset("tiny", **{field: value})


def test_config_json_round_trips_through_transformers(tmp_path):
    config = ElectraConfig.from_preset("tiny", id2label={0: "bad", 1: "good"}, objective="mlm")
    config.save(str(tmp_path / "config.json"), architecture="ElectraForSequenceClassification")

    theirs = transformers.ElectraConfig.from_pretrained(tmp_path)
    assert theirs.hidden_size == 32 and theirs.embedding_size == 16 and theirs.id2label == {0: "bad", 1: "good"}
    theirs.save_pretrained(tmp_path / "again")

    assert ElectraConfig.load(str(tmp_path / "again")) == config


def test_config_json_of_another_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="config.json.*model_type"):
        ElectraConfig.load(str(tmp_path))
