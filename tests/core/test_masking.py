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


@pytest.mark.parametrize("mask_prob", [0.15, 0.25])
def test_masked_fraction_is_within_one_percent_of_the_configured_rate(mask_prob):
    input_ids, attention_mask = packed_batch()
    selected = masking.select_positions(input_ids, attention_mask, SPECIAL, mask_prob, torch.Generator().manual_seed(1))
    fraction = selected.sum().item() / maskable(input_ids, attention_mask).sum().item()
    assert abs(fraction - mask_prob) <= 0.01


def test_special_and_pad_tokens_are_never_selected():
    input_ids, attention_mask = packed_batch()
    selected = masking.select_positions(input_ids, attention_mask, SPECIAL, 0.5, torch.Generator().manual_seed(2))
    assert not selected[~maskable(input_ids, attention_mask)].any()
    assert selected.any(dim=1).all()  # every row with maskable tokens gets at least one prediction


def test_selection_covers_every_maskable_position_uniformly():
    input_ids, attention_mask = packed_batch(rows=1, seq_len=64)
    input_ids = input_ids.expand(4000, -1)
    attention_mask = attention_mask.expand(4000, -1)
    selected = masking.select_positions(input_ids, attention_mask, SPECIAL, 0.15, torch.Generator().manual_seed(3))
    per_position = selected.float().mean(0)[maskable(input_ids[:1], attention_mask[:1])[0]]
    assert per_position.min() > 0.10 and per_position.max() < 0.20


def test_electra_corruption_splits_mask_and_kept_within_two_percent():
    input_ids, attention_mask = packed_batch()
    rng = torch.Generator().manual_seed(4)
    selected = masking.select_positions(input_ids, attention_mask, SPECIAL, 0.15, rng)
    corrupted = masking.corrupt_selected(input_ids, selected, MASK, VOCAB, mask_share=0.85, generator=rng)
    as_mask = (corrupted[selected] == MASK).float().mean().item()
    kept = (corrupted[selected] == input_ids[selected]).float().mean().item()
    assert abs(as_mask - 0.85) <= 0.02 and abs(kept - 0.15) <= 0.02
    assert torch.equal(corrupted[~selected], input_ids[~selected])


def test_mlm_corruption_is_80_10_10():
    input_ids, attention_mask = packed_batch()
    rng = torch.Generator().manual_seed(5)
    selected = masking.select_positions(input_ids, attention_mask, SPECIAL, 0.15, rng)
    corrupted = masking.corrupt_selected(
        input_ids, selected, MASK, VOCAB, masking.BERT_MASK_SHARE, masking.BERT_RANDOM_SHARE, generator=rng
    )
    original, changed = input_ids[selected], corrupted[selected]
    as_mask = (changed == MASK).float().mean().item()
    kept = (changed == original).float().mean().item()
    random = 1.0 - as_mask - kept
    assert abs(as_mask - 0.8) <= 0.02 and abs(kept - 0.1) <= 0.02 and abs(random - 0.1) <= 0.02


def test_masking_is_deterministic_under_a_seeded_generator():
    input_ids, attention_mask = packed_batch(rows=64)

    def run(seed):
        rng = torch.Generator().manual_seed(seed)
        selected = masking.select_positions(input_ids, attention_mask, SPECIAL, 0.15, rng)
        return selected, masking.corrupt_selected(input_ids, selected, MASK, VOCAB, 0.85, generator=rng)

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
