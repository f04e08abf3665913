"""Dynamic masking and sampling for ELECTRA and masked-LM pretraining: pure functions of their inputs.

Masking follows the reference implementation (google-research/electra, pretrain/pretrain_helpers.py `mask`):
each sequence has a fixed number of prediction slots, `max_predictions_per_seq`; of them,
round(mask_prob x non-pad tokens) are used (at least one), their positions drawn uniformly *with replacement*
among the maskable tokens (not special, not pad), and the rest carry weight 0. Fixed shapes keep the step free
of data-dependent sizes and host round-trips. A position drawn twice is corrupted once and counted twice in the
masked-LM loss, as in the reference.

Every random draw goes through the `generator` argument (a torch.Generator on the tensors' device, or None
for torch's global RNG), so a run seeded by (seed, step, rank) masks the same way after a restart. The
training step draws all of a batch's uniforms at once (`MaskingNoise.draw`) and hands them in as tensors: a
compiled step then holds no generator object, which torch.compile cannot trace, and the draws stay the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def max_predictions_per_seq(seq_len: int, mask_prob: float) -> int:
    """The reference's slot count: int((mask_prob + 0.005) * seq_len), at least one."""
    return max(1, int((mask_prob + 0.005) * seq_len))


@dataclass
class MaskingNoise:
    """The uniform draws in [0, 1) of one batch's masking and sampling, each (batch, slots)."""

    positions: torch.Tensor
    """Which maskable token each slot takes (select_slots)."""
    corruption: torch.Tensor
    """[MASK] where below mask_token_share, else the token is kept (corrupt_slots)."""
    sampling: torch.Tensor
    """The inverse-CDF draw of each slot's sampled replacement (sample_tokens)."""

    @classmethod
    def draw(cls, batch: int, slots: int, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None) -> "MaskingNoise":
        """In the order select_slots, corrupt_slots and sample_tokens draw them when given a generator."""
        return cls(*(torch.rand(batch, slots, generator=generator, device=device) for _ in range(3)))


def _uniform(shape, device, generator: torch.Generator | None, draws: torch.Tensor | None) -> torch.Tensor:
    return draws if draws is not None else torch.rand(shape, generator=generator, device=device)


def maskable_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    special_token_ids: Sequence[int]) -> torch.Tensor:
    """Non-pad tokens that are not special. One comparison per special id (a handful) instead of torch.isin on a
    tensor of them, which would copy that tensor to the device in every step."""
    maskable = attention_mask.bool()
    for token in special_token_ids:
        maskable = maskable & (input_ids != int(token))
    return maskable


@dataclass
class MaskedSlots:
    """The prediction slots of a batch, each (batch, slots)."""

    positions: torch.Tensor
    """Position of each slot in its sequence; unused slots point at 0 ([CLS]) and have weight 0."""
    weights: torch.Tensor
    """1.0 for a used slot, 0.0 for an unused one: the masked-LM loss is the weighted mean over slots."""
    first: torch.Tensor
    """Used and the first slot of its position: where a corruption or a sample is written (once per position)."""

    def write(self, input_ids: torch.Tensor, values: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """A copy of input_ids with `values` (batch, slots) written at the slots' positions, once per position
        (slots that are unused, repeated or outside `where` write nothing)."""
        batch, seq_len = input_ids.shape
        keep = self.first if where is None else self.first & where
        # Slots that write nothing go to an extra column that is dropped: scatter indices stay unique.
        index = torch.where(keep, self.positions, seq_len)
        padded = torch.cat((input_ids, input_ids.new_zeros(batch, 1)), dim=1)
        return padded.scatter(1, index, values.to(input_ids.dtype))[:, :seq_len]

    def selected(self, seq_len: int) -> torch.Tensor:
        """Boolean (batch, seq_len): positions that at least one used slot points at."""
        batch = self.positions.shape[0]
        index = torch.where(self.first, self.positions, seq_len)
        marks = torch.zeros(batch, seq_len + 1, dtype=torch.bool, device=self.positions.device)
        return marks.scatter(1, index, True)[:, :seq_len]


def select_slots(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_token_ids: Sequence[int],
    mask_prob: float,
    max_predictions: int,
    generator: torch.Generator | None = None,
    draws: torch.Tensor | None = None,
) -> MaskedSlots:
    """Draws the prediction slots of a batch: round(mask_prob x non-pad tokens) used slots per sequence (at
    least one, at most max_predictions), positions uniform with replacement over maskable tokens.
    draws: (batch, max_predictions) uniforms to use instead of drawing from `generator`."""
    maskable = maskable_tokens(input_ids, attention_mask, special_token_ids)
    counts = maskable.sum(dim=1, keepdim=True)  # (batch, 1) maskable tokens per sequence
    # As the reference: the number to predict counts every non-pad token, [CLS] and [SEP] included.
    to_predict = (attention_mask.sum(dim=1).float() * mask_prob).round().long().clamp(1, max_predictions)
    slot = torch.arange(max_predictions, device=input_ids.device)
    used = (slot[None, :] < to_predict[:, None]) & (counts > 0)
    # Uniform with replacement: the k-th maskable token (k uniform in 1..count) via the running count.
    draws = _uniform((input_ids.shape[0], max_predictions), input_ids.device, generator, draws)
    k = (draws * counts).long().clamp(max=counts.clamp(min=1) - 1) + 1
    positions = torch.searchsorted(maskable.long().cumsum(dim=1), k).clamp(max=input_ids.shape[1] - 1)
    positions = torch.where(used, positions, 0)
    earlier = torch.ones(max_predictions, max_predictions, dtype=torch.bool, device=input_ids.device).tril(-1)
    repeated = ((positions[:, :, None] == positions[:, None, :]) & used[:, None, :] & earlier).any(dim=2)
    return MaskedSlots(positions=positions, weights=used.float(), first=used & ~repeated)


def corrupt_slots(
    input_ids: torch.Tensor,
    slots: MaskedSlots,
    mask_token_id: int,
    mask_share: float,
    generator: torch.Generator | None = None,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """The generator's input: a used slot's position becomes [MASK] with probability mask_share and otherwise
    keeps its token (the reference's 85% / 15%, for ELECTRA and for its BERT objective alike)."""
    draw = _uniform(slots.positions.shape, input_ids.device, generator, draws)
    masks = torch.full_like(slots.positions, mask_token_id)
    return slots.write(input_ids, masks, where=draw < mask_share)


def sample_tokens(
    logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row of logits (..., vocab), sampled from softmax(logits / temperature); draws: one uniform
    per row (shape logits.shape[:-1]) to use instead of drawing from `generator`.

    Inverse-CDF sampling: one uniform draw per row, located in the running sum of the probabilities.
    Gumbel-max or torch.multinomial draw or scan per vocabulary entry and were ~7x slower on CPU at
    ELECTRA-Small's 30,522 tokens. The draw is scaled by the row's total so that float rounding in the
    running sum cannot push it past the last token.
    """
    with torch.no_grad():
        cumulative = torch.softmax(logits.float() / temperature, dim=-1).cumsum_(dim=-1)
        draws = _uniform(cumulative.shape[:-1], logits.device, generator, draws)[..., None]
        draws = draws * cumulative[..., -1:]
        tokens = torch.searchsorted(cumulative, draws, right=True).squeeze(-1)
        return tokens.clamp_(max=logits.shape[-1] - 1)


def mlm_labels(input_ids: torch.Tensor, selected: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Masked-LM targets in the transformers convention: the original id where selected, ignore_index elsewhere."""
    return input_ids.masked_fill(~selected, ignore_index)
