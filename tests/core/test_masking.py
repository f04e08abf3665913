"""Masking and sampling statistics, measured on many tokens."""

from __future__ import annotations

import pytest
import torch

from electra_core import masking

PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIAL = (PAD, CLS, SEP, MASK)
VOCAB = 1000


def packed_batch(rows: int = 512, seq_len: int = 128, seed: int = 0):
    """[CLS] a [SEP] b [SEP] rows with varied lengths and trailing padding."""
    rng = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (rows, seq_len), generator=rng)
    lengths = torch.randint(seq_len // 4, seq_len + 1, (rows,), generator=rng)
    attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    input_ids[:, 0] = CLS
    input_ids[torch.arange(rows), lengths - 1] = SEP
    input_ids[torch.arange(rows), lengths // 2] = SEP
    input_ids[attention_mask == 0] = PAD
    return input_ids, attention_mask


def maskable(input_ids, attention_mask):
    return attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(SPECIAL))


def slots_of(input_ids, attention_mask, mask_prob=0.15, seed=0):
    n = masking.max_predictions_per_seq(input_ids.shape[1], mask_prob)
    return masking.select_slots(input_ids, attention_mask, SPECIAL, mask_prob, n, torch.Generator().manual_seed(seed))


def test_slot_count_is_the_references():
    assert masking.max_predictions_per_seq(128, 0.15) == 19 and masking.max_predictions_per_seq(512, 0.25) == 130


@pytest.mark.parametrize("mask_prob", [0.15, 0.25])
def test_each_sequence_predicts_round_mask_prob_times_its_non_pad_tokens(mask_prob):
    input_ids, attention_mask = packed_batch()
    slots = slots_of(input_ids, attention_mask, mask_prob, seed=1)
    expected = (attention_mask.sum(1).float() * mask_prob).round().clamp(min=1)
    assert torch.equal(slots.weights.sum(1), expected)


def test_special_and_pad_tokens_are_never_selected():
    input_ids, attention_mask = packed_batch()
    slots = slots_of(input_ids, attention_mask, 0.5, seed=2)
    used = slots.weights.bool()
    chosen = torch.zeros_like(input_ids, dtype=torch.bool)
    chosen[torch.arange(len(input_ids))[:, None].expand_as(slots.positions)[used], slots.positions[used]] = True
    assert not chosen[~maskable(input_ids, attention_mask)].any()
    assert used.any(dim=1).all()  # every row with maskable tokens gets at least one prediction
    assert torch.equal(slots.selected(input_ids.shape[1]), chosen)


def test_positions_are_uniform_over_maskable_tokens_and_drawn_with_replacement():
    input_ids, attention_mask = packed_batch(rows=1, seq_len=64)
    input_ids, attention_mask = input_ids.expand(4000, -1), attention_mask.expand(4000, -1)
    slots = slots_of(input_ids, attention_mask, 0.15, seed=3)
    selected = slots.selected(64)
    per_position = selected.float().mean(0)[maskable(input_ids[:1], attention_mask[:1])[0]]
    assert per_position.min() > 0.09 and per_position.max() < 0.20
    # With replacement, some rows draw a position twice: it is corrupted once, and the slot is not "first".
    repeated = slots.weights.bool() & ~slots.first
    assert repeated.any()
    assert torch.equal(selected.sum(1), slots.first.sum(1))


def test_corruption_masks_85_percent_of_selected_positions_and_keeps_the_rest():
    input_ids, attention_mask = packed_batch()
    rng = torch.Generator().manual_seed(4)
    slots = masking.select_slots(input_ids, attention_mask, SPECIAL, 0.15, 19, rng)
    corrupted = masking.corrupt_slots(input_ids, slots, MASK, mask_share=0.85, generator=rng)
    selected = slots.selected(input_ids.shape[1])
    as_mask = (corrupted[selected] == MASK).float().mean().item()
    kept = (corrupted[selected] == input_ids[selected]).float().mean().item()
    assert abs(as_mask - 0.85) <= 0.02 and abs(kept - 0.15) <= 0.02
    assert torch.equal(corrupted[~selected], input_ids[~selected])


def test_written_samples_land_once_per_selected_position():
    input_ids, attention_mask = packed_batch(rows=256)
    slots = slots_of(input_ids, attention_mask, 0.3, seed=6)
    samples = torch.randint(5, VOCAB, slots.positions.shape, generator=torch.Generator().manual_seed(6))
    written = slots.write(input_ids, samples)
    selected = slots.selected(input_ids.shape[1])
    assert torch.equal(written[~selected], input_ids[~selected])
    rows, columns = torch.nonzero(slots.first, as_tuple=True)
    assert torch.equal(written[rows, slots.positions[rows, columns]], samples[rows, columns])


def test_masking_is_deterministic_under_a_seeded_generator():
    input_ids, attention_mask = packed_batch(rows=64)

    def run(seed):
        rng = torch.Generator().manual_seed(seed)
        slots = masking.select_slots(input_ids, attention_mask, SPECIAL, 0.15, 19, rng)
        return slots.positions, masking.corrupt_slots(input_ids, slots, MASK, 0.85, generator=rng)

    first, second, other = run(7), run(7), run(8)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_sample_tokens_follows_the_softmax():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).expand(40000, -1)
    samples = masking.sample_tokens(logits, generator=torch.Generator().manual_seed(9))
    frequencies = torch.bincount(samples, minlength=4).float() / samples.numel()
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.01)


def test_sampling_temperature_sharpens_the_distribution():
    logits = torch.log(torch.tensor([0.6, 0.4])).expand(20000, -1)
    cold = masking.sample_tokens(logits, temperature=0.25, generator=torch.Generator().manual_seed(10))
    assert (cold == 0).float().mean() > 0.8
