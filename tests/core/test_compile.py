"""The pretraining step has fixed shapes and no host round trip: it compiles as one graph and computes what the
eager step and a boolean-indexing reference compute."""

from __future__ import annotations

import pytest
import torch

from electra_core import ElectraConfig, ElectraPretrainingModel, masking

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def padded_batch(config: ElectraConfig, rows: int = 4, seq_len: int = 32):
    input_ids = torch.randint(5, config.vocab_size, (rows, seq_len), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([seq_len, seq_len - 7, seq_len // 2, seq_len])[:rows]
    attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    input_ids[:, 0] = config.cls_token_id
    input_ids[torch.arange(rows), lengths - 1] = config.sep_token_id
    input_ids[attention_mask == 0] = config.pad_token_id
    return input_ids, attention_mask


def distinct_slot_noise(model: ElectraPretrainingModel, input_ids: torch.Tensor) -> masking.MaskingNoise:
    """Noise whose slots pick distinct positions (slot j takes the (j+1)-th share of the maskable tokens), so a
    reference that marks positions (as transformers' -100 labels do) must see the same loss."""
    noise = model.masking_noise(input_ids, torch.Generator().manual_seed(3))
    slots = noise.positions.shape[1]
    noise.positions = ((torch.arange(slots) + 0.5) / slots).expand_as(noise.positions).clone()
    return noise


def loss_and_gradients(model, step, **inputs):
    """step: the model itself or a compiled wrapper of it; the gradients are read from the model's parameters."""
    model.zero_grad(set_to_none=True)
    output = step(**inputs)
    output.loss.backward()
    return output, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["electra", "mlm"])
@pytest.mark.parametrize("padded", [True, False])
def test_the_pretraining_forward_and_backward_compile_as_one_graph(objective, padded):
    config = ElectraConfig.from_preset("tiny", objective=objective)
    model = ElectraPretrainingModel(config).train()
    input_ids, attention_mask = padded_batch(config)
    if not padded:
        attention_mask = torch.ones_like(attention_mask)
    noise = model.masking_noise(input_ids, torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    # fullgraph=True raises at the first graph break (a host sync, a data-dependent shape, a generator object);
    # aot_eager also traces the backward, without inductor's minute of C++ compilation on 2 cores.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    output = compiled(input_ids=input_ids, attention_mask=attention_mask, noise=noise, padded=padded)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert model.generator.electra.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_compiled_step_gives_the_eager_loss_and_gradients():
    config = ElectraConfig.from_preset("tiny", **NO_DROPOUT)
    model = ElectraPretrainingModel(config).train()
    input_ids, attention_mask = padded_batch(config)
    noise = model.masking_noise(input_ids, torch.Generator().manual_seed(1))
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "noise": noise, "padded": True}
    eager, eager_grads = loss_and_gradients(model, model, **inputs)
    torch._dynamo.reset()
    compiled_step = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled, compiled_grads = loss_and_gradients(model, compiled_step, **inputs)
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-5, atol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_noise_drawn_up_front_masks_as_the_generator_would():
    config = ElectraConfig.from_preset("tiny")
    model = ElectraPretrainingModel(config).eval()
    input_ids, attention_mask = padded_batch(config)
    from_rng = model(input_ids=input_ids, attention_mask=attention_mask, rng=torch.Generator().manual_seed(9))
    noise = model.masking_noise(input_ids, torch.Generator().manual_seed(9))
    from_noise = model(input_ids=input_ids, attention_mask=attention_mask, noise=noise, padded=True)
    assert torch.equal(from_rng.loss, from_noise.loss)
    assert torch.equal(from_rng.replaced_fraction, from_noise.replaced_fraction)


def test_the_padding_decision_from_the_host_matches_reading_the_mask():
    config = ElectraConfig.from_preset("tiny")
    model = ElectraPretrainingModel(config).eval()
    input_ids, attention_mask = padded_batch(config)
    noise = model.masking_noise(input_ids, torch.Generator().manual_seed(2))
    told = model(input_ids=input_ids, attention_mask=attention_mask, noise=noise, padded=True).loss
    read = model(input_ids=input_ids, attention_mask=attention_mask, noise=noise).loss
    assert torch.equal(told, read)
    # Told "no padding" on a padded batch, the encoders would attend to pad tokens: the loss must differ,
    # or the flag would not be reaching them.
    ignored = model(input_ids=input_ids, attention_mask=attention_mask, noise=noise, padded=False).loss
    assert not torch.equal(told, ignored)


def test_weighted_losses_over_full_tensors_equal_boolean_indexing():
    """The reference formulation (positions marked, -100 labels, logits indexed by the mask), computed with
    the model's own generator and discriminator for the same masking draw."""
    config = ElectraConfig.from_preset("tiny")
    model = ElectraPretrainingModel(config).eval()
    input_ids, attention_mask = padded_batch(config)
    noise = distinct_slot_noise(model, input_ids)
    output = model(input_ids=input_ids, attention_mask=attention_mask, noise=noise, padded=True)

    slots = masking.select_slots(input_ids, attention_mask, config.special_token_ids, config.mask_prob,
                                 noise.positions.shape[1], draws=noise.positions)
    assert slots.first.sum() == slots.weights.sum()  # no position drawn twice
    selected = slots.selected(input_ids.shape[1])
    generator_input = masking.corrupt_slots(input_ids, slots, config.mask_token_id, config.mask_token_share,
                                            draws=noise.corruption)
    generated = model.generator(generator_input, attention_mask, labels=masking.mlm_labels(input_ids, selected))
    torch.testing.assert_close(output.generator_loss, generated.loss, rtol=1e-5, atol=1e-6)

    # The samples, written at the marked positions in position order (the slots' own order is not sorted).
    slot_logits = generated.logits.gather(1, slots.positions[..., None].expand(-1, -1, generated.logits.shape[-1]))
    sampled = masking.sample_tokens(slot_logits, config.sampling_temperature, draws=noise.sampling)
    discriminator_input = slots.write(input_ids, sampled)
    is_replaced = (discriminator_input != input_ids).long()
    judged = model.discriminator(discriminator_input, attention_mask, labels=is_replaced)
    torch.testing.assert_close(output.discriminator_loss, judged.loss, rtol=1e-5, atol=1e-6)
    active = attention_mask.bool()
    expected_fraction = is_replaced[active].float().mean()
    torch.testing.assert_close(output.replaced_fraction, expected_fraction)
