"""attention_init: neighbour. Fresh heads attend to one neighbouring token each, in every shape and in the
generator too, and the weights stay what transformers loads."""

from __future__ import annotations

import pytest
import torch
import transformers

from electra_core import ElectraConfig, ElectraForSequenceClassification, ElectraPretrainingModel
from electra_core.initialization import head_offset
from electra_core.modeling import ElectraSelfAttention


def attention_on_offsets(encoder, input_ids: torch.Tensor) -> list[dict[int, float]]:
    """Per head of the first layer: the mean attention weight a token gives to the token `offset` away."""
    shares = []

    def record(module, inputs, _):
        x = inputs[0]
        batch, length, _ = x.shape
        def heads(projection):
            return projection(x).view(batch, length, module.num_heads, module.head_dim).transpose(1, 2)
        weights = (heads(module.query) @ heads(module.key).transpose(-1, -2) / module.head_dim ** 0.5).softmax(-1)
        index = torch.arange(length)
        for head in range(module.num_heads):
            row = {}
            for offset in (-2, -1, 0, 1, 2):
                inside = (index + offset >= 0) & (index + offset < length)
                row[offset] = weights[:, head, index[inside], (index + offset)[inside]].mean().item()
            shares.append(row)

    first = next(m for m in encoder.modules() if isinstance(m, ElectraSelfAttention))
    handle = first.register_forward_hook(record)
    with torch.no_grad():
        encoder(input_ids)
    handle.remove()
    return shares


@pytest.mark.parametrize("preset", ["tiny", "mini", "small"])
def test_every_fresh_head_starts_on_its_own_neighbour_in_the_discriminator_and_the_generator(preset):
    config = ElectraConfig.from_preset(preset, vocab_size=500, attention_init="neighbour")
    torch.manual_seed(0)
    model = ElectraPretrainingModel(config).eval()
    input_ids = torch.randint(5, config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1))
    for encoder in (model.discriminator.electra, model.generator.electra):
        for head, shares in enumerate(attention_on_offsets(encoder, input_ids)):
            assert shares[head_offset(head)] > 0.6, (preset, head, shares)  # uniform attention: 1/128

    normal = ElectraPretrainingModel(config.replace(attention_init="normal")).eval()
    assert max(max(s.values()) for s in attention_on_offsets(normal.discriminator.electra, input_ids)) < 0.05


def test_neighbour_heads_leaves_the_other_heads_global_in_the_discriminator_and_the_generator():
    config = ElectraConfig.from_preset("tiny", vocab_size=500, attention_init="neighbour", neighbour_heads=1)
    torch.manual_seed(0)
    model = ElectraPretrainingModel(config).eval()
    input_ids = torch.randint(5, config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1))
    for encoder in (model.discriminator.electra, model.generator.electra):
        shares = attention_on_offsets(encoder, input_ids)
        assert shares[0][head_offset(0)] > 0.6, shares[0]
        assert len(shares) > 1 and all(max(row.values()) < 0.05 for row in shares[1:]), shares[1:]


def test_a_neighbour_heads_count_beyond_the_heads_is_refused():
    with pytest.raises(ValueError, match="neighbour_heads must be None or 0 to num_attention_heads"):
        ElectraConfig.from_preset("tiny", attention_init="neighbour", neighbour_heads=5)


def test_a_neighbour_initialised_classifier_loads_into_transformers_with_identical_outputs(tmp_path):
    config = ElectraConfig.from_preset("tiny", attention_init="neighbour")
    torch.manual_seed(2)
    ours = ElectraForSequenceClassification(config).eval()
    ours.save_pretrained(str(tmp_path))
    theirs = transformers.ElectraForSequenceClassification.from_pretrained(tmp_path).eval()
    input_ids = torch.randint(5, config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours(input_ids).logits - theirs(input_ids).logits).abs().max().item() <= 1e-4
    assert ElectraConfig.load(str(tmp_path)).attention_init == "neighbour"


def test_the_same_seed_gives_the_same_neighbour_initialisation():
    config = ElectraConfig.from_preset("tiny", attention_init="neighbour")
    torch.manual_seed(4)
    first = ElectraPretrainingModel(config).state_dict()
    torch.manual_seed(4)
    second = ElectraPretrainingModel(config).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_an_unknown_attention_init_is_refused():
    with pytest.raises(ValueError, match="attention_init must be one of"):
        ElectraConfig.from_preset("tiny", attention_init="local")
