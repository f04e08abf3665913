"""`attention_init: neighbour`: every attention head starts out attending to one neighbouring token.

Why (#19, benchmarks/results/disc_locality_probe.md): at the CPU budgets this project runs, a discriminator
initialised as transformers does (every weight normal, std 0.02) never learns replaced-token detection from
context. Its attention starts uniform, and its held-out AUC stays at 0.51-0.52 after 2,000 steps, while a
5-token convolution on the same data reaches 0.67. Heads that attend to the next and the previous token from the
first step (a width-3 convolution made of attention, with a value map per offset) learn: with dropout off, AUC
0.71-0.73 in full ELECTRA pretraining, and the generator's loss ends lower as well.

How: only initial values change, so a checkpoint keeps transformers' layout and loads in transformers as it is.
- The position table becomes sinusoids (times POSITION_SCALE) in the first head_dim columns. The dot product of
  two positions' rows then depends only on their distance, and a rotation maps a position to its neighbour's.
- Head h's query-key product, restricted to those columns, is BETA times the rotation by its offset (head_offset):
  heads 0 and 1 look at the next and the previous token, heads 2 and 3 two tokens away, and so on.
  Added to it is ALPHA times a random matrix, the mimetic initialisation's noise (Trockman & Kolter, "Mimetic
  Initialization of Self-Attention Layers", ICML 2023). The product is split into query and key weights by an SVD.
- When the embeddings are narrower or wider than the encoder, the projection carries those columns through
  unchanged, so that the first layer sees the same positions.
With these constants, head 0 of the 2-layer, 64-wide mini shape puts 0.89 of its attention on its neighbour
(uniform attention over 128 tokens would put 0.008 there).

Why it is opt-in: a sentence classifier started from it (random or pretrained for 1600 steps) does not learn
SST-2; each half (the sinusoids, the neighbour heads) alone keeps it at chance, because [CLS] keeps looking at
its neighbour. On the demo task, which a docstring's first words decide, pretraining from it gains 2 points.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POSITION_SCALE = 0.4
"""Amplitude of the sinusoidal position rows (the token rows have std initializer_range)."""
BETA = 4.0
"""Weight of the neighbour rotation in each head's query-key product."""
ALPHA = 0.3
"""Weight of the random part of the query-key product."""


def frequencies(pairs: int, width: int) -> torch.Tensor:
    """The first `pairs` frequencies of the transformer's sinusoids over `width` columns. Fixed by the table's
    width, so that a generator (narrower heads, fewer pairs) reads the shared table at the same frequencies."""
    return torch.exp(torch.arange(0, 2 * pairs, 2, dtype=torch.float32) * (-math.log(10000.0) / width))


def sinusoids(rows: int, width: int, used: int) -> torch.Tensor:
    """(sin, cos) pairs of position x frequency in the first `used` (even) columns, zeros after."""
    position = torch.arange(rows, dtype=torch.float32)[:, None] * frequencies(used // 2, width)
    table = torch.zeros(rows, width)
    table[:, 0:used:2] = torch.sin(position)
    table[:, 1:used:2] = torch.cos(position)
    return table


def shift_rotation(used: int, width: int, offset: int) -> torch.Tensor:
    """R (used x used) with R @ p(i) = p(i + offset) on the first `used` columns of sinusoids(.., width, used)
    rows: a rotation of each (sin, cos) pair."""
    rotation = torch.zeros(used, used)
    for m, frequency in enumerate(frequencies(used // 2, width).tolist()):
        cos, sin = math.cos(frequency * offset), math.sin(frequency * offset)
        rotation[2 * m:2 * m + 2, 2 * m:2 * m + 2] = torch.tensor([[cos, sin], [-sin, cos]])
    return rotation


def factors(target: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(left, right) with left @ right the best rank-`rank` approximation of `target` (SVD, the square root
    of the singular values on each side)."""
    u, s, vh = torch.linalg.svd(target)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def head_offset(head: int) -> int:
    """Where head `head` starts looking, relative to the token itself: +1 (the next token), -1, +2, -2, ..."""
    return (-1) ** head * (1 + head // 2)


def set_query_key_product(attention: nn.Module, head: int, target: torch.Tensor) -> None:
    """Writes head `head`'s query and key weights so that query.T @ key approximates `target`."""
    k = attention.head_dim
    query, key = factors(target, k)
    attention.query.weight[head * k:(head + 1) * k] = query.T
    attention.key.weight[head * k:(head + 1) * k] = key


@torch.no_grad()
def neighbour_attention_init(encoder: nn.Module, alpha: float = ALPHA, beta: float = BETA,
                             position_scale: float = POSITION_SCALE, heads: int | None = None) -> None:
    """Re-initialises an ElectraModel's position table, embedding projection and the query-key weights of the
    first `heads` heads of every layer (None: all) as described above; everything else keeps its normal
    initialisation, so the other heads start out global."""
    from electra_core.modeling import ElectraSelfAttention  # here: modeling imports this module

    config = encoder.config
    positions = encoder.embeddings.position_embeddings.weight
    table_width = positions.shape[1]
    used = min(config.hidden_size // config.num_attention_heads, table_width) // 2 * 2
    if used == 0:
        return  # heads one column wide: no (sin, cos) pair fits
    positions.copy_(sinusoids(positions.shape[0], table_width, used) * position_scale)
    project = getattr(encoder, "embeddings_project", None)
    if project is not None:
        project.weight[:used, :used] = torch.eye(used)
    for module in encoder.modules():
        if isinstance(module, ElectraSelfAttention):
            width = module.query.weight.shape[1]
            for head in range(module.num_heads if heads is None else min(heads, module.num_heads)):
                target = alpha * torch.randn(width, width) / math.sqrt(width)
                # p(i) . R(-d) p(j) = p(i) . p(j - d): largest at j = i + d
                target[:used, :used] += beta * shift_rotation(used, table_width, -head_offset(head))
                set_query_key_product(module, head, target)
