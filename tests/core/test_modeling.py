"""The pretraining model: its objective, its parameter sharing, its training signal, its files."""

from __future__ import annotations


import pytest
import torch

import electra_core
from electra_core import ElectraConfig, ElectraPretrainingModel


def token_batch(config: ElectraConfig, rows: int = 8, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    input_ids = torch.randint(5, config.vocab_size, (rows, seq_len), generator=torch.Generator().manual_seed(seed))
    input_ids[:, 0] = config.cls_token_id
    input_ids[:, -1] = config.sep_token_id
    return input_ids


def test_loss_is_generator_loss_plus_weighted_discriminator_loss():
    config = ElectraConfig.from_preset("tiny")
    output = ElectraPretrainingModel(config)(input_ids=token_batch(config), rng=torch.Generator().manual_seed(0))
    expected = output.generator_loss + 50.0 * output.discriminator_loss
    assert torch.allclose(output.loss, expected)
    metrics = output.metrics()
    assert set(metrics) >= {"generator_accuracy", "discriminator_accuracy", "replaced_fraction", "masked_tokens"}
    # round(0.15 x 32 tokens) = 5 per row, capped at the reference's int(0.155 x 32) = 4 slots; 8 rows
    assert metrics["masked_tokens"] == 8 * 4
    assert 0.0 < metrics["replaced_fraction"] <= 0.15


def test_generator_and_discriminator_share_embeddings_and_the_generator_output_is_tied():
    model = ElectraPretrainingModel(ElectraConfig.from_preset("small", num_hidden_layers=1))
    assert model.generator.electra.embeddings is model.discriminator.electra.embeddings
    assert model.generator.generator_lm_head.weight is model.discriminator.electra.embeddings.word_embeddings.weight
    assert model.generator.config.hidden_size == 64  # Small's generator is a quarter as wide
    assert model.generator.config.num_attention_heads == 1
    assert model.generator.config.intermediate_size == 256


def test_no_gradient_flows_from_the_discriminator_loss_into_the_generator():
    config = ElectraConfig.from_preset("tiny")
    model = ElectraPretrainingModel(config)
    output = model(input_ids=token_batch(config), rng=torch.Generator().manual_seed(0))
    output.discriminator_loss.backward()
    generator_only = [p for name, p in model.generator.named_parameters() if not name.startswith("electra.embeddings")]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in generator_only)
    assert model.discriminator.electra.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_mlm_objective_trains_one_discriminator_sized_masked_lm():
    config = ElectraConfig.from_preset("tiny", objective="mlm")
    model = ElectraPretrainingModel(config)
    assert model.discriminator is None
    assert model.generator.config.hidden_size == config.hidden_size
    output = model(input_ids=token_batch(config), rng=torch.Generator().manual_seed(0))
    assert output.discriminator_loss is None and torch.equal(output.loss, output.generator_loss)


def test_same_rng_seed_gives_the_same_loss_in_eval_mode():
    config = ElectraConfig.from_preset("tiny")
    model = ElectraPretrainingModel(config).eval()
    inputs = token_batch(config)
    first = model(input_ids=inputs, rng=torch.Generator().manual_seed(5)).loss
    second = model(input_ids=inputs, rng=torch.Generator().manual_seed(5)).loss
    third = model(input_ids=inputs, rng=torch.Generator().manual_seed(6)).loss
    assert torch.equal(first, second) and not torch.equal(first, third)


@pytest.mark.parametrize("objective", ["electra", "mlm"])
def test_tiny_preset_overfits_one_batch(objective):
    torch.manual_seed(0)
    config = ElectraConfig.from_preset(
        "tiny", objective=objective, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model = ElectraPretrainingModel(config).train()
    inputs = token_batch(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    rng = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(400):
        loss = model(input_ids=inputs, rng=rng).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:5]) / 5


def test_pretraining_model_round_trips_through_save_and_load(tmp_path):
    config = ElectraConfig.from_preset("tiny")
    model = ElectraPretrainingModel(config).eval()
    model.save_pretrained(str(tmp_path))
    loaded = ElectraPretrainingModel.from_pretrained(str(tmp_path)).eval()
    assert loaded.generator.electra.embeddings is loaded.discriminator.electra.embeddings
    inputs = token_batch(config)
    first = model(input_ids=inputs, rng=torch.Generator().manual_seed(3))
    second = loaded(input_ids=inputs, rng=torch.Generator().manual_seed(3))
    assert torch.equal(first.loss, second.loss)


def test_mlm_model_round_trips_as_a_generator_only(tmp_path):
    model = ElectraPretrainingModel(ElectraConfig.from_preset("tiny", objective="mlm"))
    model.save_pretrained(str(tmp_path))
    assert not (tmp_path / "discriminator").exists()
    loaded = ElectraPretrainingModel.from_pretrained(str(tmp_path))
    assert loaded.config.objective == "mlm" and loaded.discriminator is None


def test_models_save_and_load_on_s3(s3_bucket):
    config = ElectraConfig.from_preset("tiny", num_labels=2)
    model = electra_core.ElectraForSequenceClassification(config).eval()
    uri = f"{s3_bucket}/models/classifier"
    model.save_pretrained(uri)
    loaded = electra_core.ElectraForSequenceClassification.from_pretrained(uri).eval()
    inputs = token_batch(config)
    assert torch.equal(model(inputs).logits, loaded(inputs).logits)


def test_discriminator_loads_into_a_classifier_with_a_fresh_head(tmp_path, caplog):
    config = ElectraConfig.from_preset("tiny")
    discriminator = electra_core.ElectraForPreTraining(config)
    discriminator.save_pretrained(str(tmp_path))
    with caplog.at_level("WARNING"):
        classifier = electra_core.ElectraForSequenceClassification.from_pretrained(str(tmp_path), num_labels=4)
    assert "classifier.out_proj.weight" in caplog.text
    assert classifier.classifier.out_proj.out_features == 4
    assert torch.equal(classifier.electra.embeddings.word_embeddings.weight,
                       discriminator.electra.embeddings.word_embeddings.weight)


def test_loading_weights_of_another_shape_names_the_file(tmp_path):
    electra_core.ElectraForPreTraining(ElectraConfig.from_preset("tiny")).save_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 64'))
    with pytest.raises(ValueError, match="model.safetensors"):
        electra_core.ElectraForPreTraining.from_pretrained(str(tmp_path))


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        electra_core.ElectraForPreTraining.from_pretrained(str(tmp_path / "nowhere"))


def test_dropout_zeroes_the_configured_share_and_keeps_the_mean():
    from electra_core.modeling import Dropout

    dropout = Dropout(0.1).train()
    out = dropout(torch.ones(1_000_000))
    assert abs((out == 0).float().mean().item() - 0.1) < 0.002
    assert abs(out.mean().item() - 1.0) < 0.005
    assert torch.equal(dropout.eval()(torch.ones(10)), torch.ones(10))


def test_training_attention_path_matches_the_inference_kernel_on_padded_batches():
    """On CPU, training with attention dropout takes an explicit softmax path; without any dropped
    probabilities it must compute what scaled_dot_product_attention does at inference."""
    config = ElectraConfig.from_preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=1e-12)
    model = electra_core.ElectraForPreTraining(config)
    input_ids = token_batch(config)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 20:] = 0
    with torch.no_grad():
        training = model.train()(input_ids, attention_mask).logits
        inference = model.eval()(input_ids, attention_mask).logits
    keep = attention_mask.bool()
    assert torch.allclose(training[keep], inference[keep], atol=1e-5)


def test_the_attention_written_for_onnx_export_computes_what_sdpa_does_on_padded_batches(monkeypatch):
    """While torch.onnx exports, attention takes the MatMul/Softmax path ONNX Runtime's patterns match; an export
    must answer what the model answers."""
    config = ElectraConfig.from_preset("tiny")
    model = electra_core.ElectraForPreTraining(config).eval()
    input_ids = token_batch(config)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    with torch.no_grad():
        sdpa = model(input_ids, attention_mask).logits
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        exported = model(input_ids, attention_mask).logits
    keep = attention_mask.bool()
    assert torch.allclose(exported[keep], sdpa[keep], atol=1e-5)


@pytest.mark.parametrize("sharing, fraction", [("shared", 0.5), ("disentangled", 0.5), ("encoder", 1.0),
                                               ("none", 0.5)])
def test_each_embedding_sharing_exports_a_discriminator_that_computes_what_training_saw(sharing, fraction, tmp_path):
    config = ElectraConfig.from_preset("tiny", embedding_sharing=sharing, generator_size_fraction=fraction)
    model = ElectraPretrainingModel(config)
    if sharing == "disentangled":
        with torch.no_grad():
            model.embedding_residual.normal_()  # as if trained: the export must hold the sum
    model.save_pretrained(str(tmp_path))
    model.eval()
    input_ids = token_batch(config)
    seen = model.discriminator.electra(input_ids, word_embeddings=model.discriminator_word_embeddings())
    exported = electra_core.ElectraForPreTraining.from_pretrained(str(tmp_path / "discriminator")).eval()
    assert torch.allclose(seen, exported.electra(input_ids), atol=1e-6)
    reloaded = ElectraPretrainingModel.from_pretrained(str(tmp_path)).eval()
    rng = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.allclose(model(input_ids=input_ids, rng=rng()).loss, reloaded(input_ids=input_ids, rng=rng()).loss)


def test_disentangled_sharing_stops_the_discriminator_loss_at_the_generator_embeddings():
    config = ElectraConfig.from_preset("tiny", embedding_sharing="disentangled")
    model = ElectraPretrainingModel(config)
    model(input_ids=token_batch(config), rng=torch.Generator().manual_seed(0)).discriminator_loss.backward()
    assert model.generator.electra.embeddings.word_embeddings.weight.grad is None
    assert model.embedding_residual.grad.abs().sum() > 0
    shared = ElectraPretrainingModel(ElectraConfig.from_preset("tiny"))
    shared(input_ids=token_batch(config), rng=torch.Generator().manual_seed(0)).discriminator_loss.backward()
    assert shared.generator.electra.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_an_unknown_embedding_sharing_or_a_tied_encoder_of_another_width_is_refused():
    with pytest.raises(ValueError, match="embedding_sharing must be one of"):
        ElectraConfig.from_preset("tiny", embedding_sharing="tied")
    with pytest.raises(ValueError, match="needs generator_size_fraction 1.0"):
        ElectraConfig.from_preset("tiny", embedding_sharing="encoder")


def test_rescaling_the_embeddings_keeps_the_outputs_and_brings_the_word_table_to_the_target_scale():
    config = ElectraConfig.from_preset("tiny", vocab_size=120)
    torch.manual_seed(0)
    model = electra_core.ElectraForSequenceClassification(config).eval()
    with torch.no_grad():  # grown as pretraining grows them, and unevenly across the three tables
        model.electra.embeddings.word_embeddings.weight.mul_(6.0)
        model.electra.embeddings.position_embeddings.weight.mul_(3.0)
    input_ids = torch.randint(5, 120, (3, 12))
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 6:] = 1
    before = model(input_ids, token_type_ids=token_type_ids).logits

    factor = model.electra.embeddings.rescale_(config.initializer_range)

    word_rms = model.electra.embeddings.word_embeddings.weight.pow(2).mean().sqrt().item()
    assert word_rms == pytest.approx(config.initializer_range, rel=1e-4)
    assert factor == pytest.approx(1 / 6.0, rel=0.05)
    torch.testing.assert_close(model(input_ids, token_type_ids=token_type_ids).logits, before, atol=1e-5, rtol=1e-4)
